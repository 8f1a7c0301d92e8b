// The register-blocked fp32 GEMM of deform_conv3d_cpu_gemm.h, written once for every instruction set.
// Included once per ISA, inside a `#pragma GCC target` region and a namespace that defines `Isa` (the
// vector type and its operations, see deform_conv3d_cpu_gemm.h), so each inclusion is compiled for
// that ISA and nothing of the math is written twice. It has no include guard on purpose.

// One block of np <= P positions x kLanes*V channels: each step broadcasts one column value of P
// positions and multiplies it into the V vectors of output channels held in registers.
template <int V, int P>
inline void gemm_block(int64_t rows, const float* a, int64_t lda, int np, const float* wt, int64_t ldw, float* ct) {
  using vec = typename Isa::vec;
  vec acc[P][V];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v) acc[p][v] = Isa::zero();
  const float* ap[P];
  for (int p = 0; p < P; ++p) ap[p] = a + std::min(p, np - 1) * lda;  // a short block repeats its last row
  for (int64_t r = 0; r < rows; ++r) {
    vec w[V];
    for (int v = 0; v < V; ++v) w[v] = Isa::load(wt + r * ldw + Isa::kLanes * v);
    for (int p = 0; p < P; ++p) {
      const vec b = Isa::broadcast(ap[p][r]);
      for (int v = 0; v < V; ++v) acc[p][v] = Isa::fmadd(b, w[v], acc[p][v]);
    }
  }
  for (int p = 0; p < np; ++p)
    for (int v = 0; v < V; ++v) Isa::store(ct + (p * V + v) * Isa::kLanes, acc[p][v]);
}

// Channels [ob, ob + kLanes*V) of every position of the tile, through a [P, kLanes*V] staging block
// that is transposed into y (channel-major), with the bias.
template <int V>
inline void gemm_tile(int64_t nt, int64_t rows, const float* colT, int64_t R, const float* wt, int64_t opg, int64_t ob,
                      const float* bias, float* y, int64_t L) {
  constexpr int P = Isa::kAccumulators / V, C = Isa::kLanes * V;
  alignas(64) float ct[P * C];
  for (int64_t j0 = 0; j0 < nt; j0 += P) {
    const int np = static_cast<int>(std::min<int64_t>(P, nt - j0));
    gemm_block<V, P>(rows, colT + j0 * R, R, np, wt + ob, opg, ct);
    for (int i = 0; i < C; ++i) {
      const float b = bias != nullptr ? bias[ob + i] : 0.0f;
      float* yo = y + (ob + i) * L + j0;
      for (int p = 0; p < np; ++p) yo[p] = ct[p * C + i] + b;
    }
  }
}

// Every output channel (opg a multiple of kLanes), in blocks of up to kMaxVectors vectors.
inline void gemm_tile_all(int64_t nt, int64_t rows, const float* colT, int64_t R, const float* wt, int64_t opg,
                          const float* bias, float* y, int64_t L) {
  for (int64_t ob = 0; ob < opg;) {
    const int64_t v = std::min<int64_t>(Isa::kMaxVectors, (opg - ob) / Isa::kLanes);
    if (Isa::kMaxVectors >= 4 && v == 4) {
      gemm_tile<(Isa::kMaxVectors >= 4 ? 4 : 1)>(nt, rows, colT, R, wt, opg, ob, bias, y, L);
    } else if (Isa::kMaxVectors >= 3 && v == 3) {
      gemm_tile<(Isa::kMaxVectors >= 3 ? 3 : 1)>(nt, rows, colT, R, wt, opg, ob, bias, y, L);
    } else if (v == 2) {
      gemm_tile<2>(nt, rows, colT, R, wt, opg, ob, bias, y, L);
    } else {
      gemm_tile<1>(nt, rows, colT, R, wt, opg, ob, bias, y, L);
    }
    ob += v * Isa::kLanes;
  }
}

// The register-blocked fp32 GEMM of deform_conv3d_cpu_gemm.h, written once for every instruction set.
// Included once per ISA, inside a `#pragma GCC target` region and a namespace that defines `Isa` (the
// vector type and its operations, see deform_conv3d_cpu_gemm.h), so each inclusion is compiled for
// that ISA and nothing of the math is written twice. It has no include guard on purpose.

// One block of np <= P positions x kLanes*V channels: each step broadcasts one column value of P
// positions and multiplies it into the V vectors of output channels held in registers. The block of
// acc (rows ldo apart) is loaded first when `accumulate`, so a long sum can be split into chunks of
// rows and still add its products in the same order. side.row() is called after every row: other work
// (the next chunk's sampling, deform_conv3d_cpu_sampler_body.h) interleaved with the FMAs, which leave
// the load ports half idle; NoSide for none.
template <int V, int P, typename Side>
D3D_ALWAYS_INLINE void gemm_block(int64_t rows, const float* a, int64_t lda, int np, const float* wt, int64_t ldw,
                                  float* acc_out, int64_t ldo, bool accumulate, Side& side) {
  using vec = typename Isa::vec;
  vec acc[P][V];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v)
      acc[p][v] = accumulate && p < np ? Isa::load(acc_out + p * ldo + Isa::kLanes * v) : Isa::zero();
  const float* ap[P];
  for (int p = 0; p < P; ++p) ap[p] = a + std::min(p, np - 1) * lda;  // a short block repeats its last row
  for (int64_t r = 0; r < rows; ++r) {
    vec w[V];
    for (int v = 0; v < V; ++v) w[v] = Isa::load(wt + r * ldw + Isa::kLanes * v);
    for (int p = 0; p < P; ++p) {
      const vec b = Isa::broadcast(ap[p][r]);
      for (int v = 0; v < V; ++v) acc[p][v] = Isa::fmadd(b, w[v], acc[p][v]);
    }
    side.row();
  }
  for (int p = 0; p < np; ++p)
    for (int v = 0; v < V; ++v) Isa::store(acc_out + p * ldo + Isa::kLanes * v, acc[p][v]);
}

// Channels [ob, ob + kLanes*V) of every position of the chunk.
template <int V, typename Side>
inline void gemm_chunk(int64_t nt, int64_t rows, const float* colT, int64_t lda, const float* wt, int64_t opg,
                       int64_t ob, float* acc, bool accumulate, Side& side) {
  constexpr int P = Isa::kAccumulators / V;
  for (int64_t j0 = 0; j0 < nt; j0 += P) {
    const int np = static_cast<int>(std::min<int64_t>(P, nt - j0));
    gemm_block<V, P>(rows, colT + j0 * lda, lda, np, wt + ob, opg, acc + j0 * opg + ob, opg, accumulate, side);
  }
}

// Vectors of output channels per block of gemm_chunk_all, from channel ob on.
inline int gemm_vectors(int64_t opg, int64_t ob) {
  return static_cast<int>(std::min<int64_t>(Isa::kMaxVectors, (opg - ob) / Isa::kLanes));
}

// acc[j, o] (+)= sum_r colT[j, r] * wt[r, o] for every output channel (opg a multiple of kLanes), in
// blocks of up to kMaxVectors vectors; side.row() after every row of every block.
template <typename Side>
inline void gemm_chunk_all(int64_t nt, int64_t rows, const float* colT, int64_t lda, const float* wt, int64_t opg,
                           float* acc, bool accumulate, Side& side) {
  for (int64_t ob = 0; ob < opg;) {
    const int v = gemm_vectors(opg, ob);
    if (Isa::kMaxVectors >= 4 && v == 4) {
      gemm_chunk<(Isa::kMaxVectors >= 4 ? 4 : 1)>(nt, rows, colT, lda, wt, opg, ob, acc, accumulate, side);
    } else if (Isa::kMaxVectors >= 3 && v == 3) {
      gemm_chunk<(Isa::kMaxVectors >= 3 ? 3 : 1)>(nt, rows, colT, lda, wt, opg, ob, acc, accumulate, side);
    } else if (v == 2) {
      gemm_chunk<2>(nt, rows, colT, lda, wt, opg, ob, acc, accumulate, side);
    } else {
      gemm_chunk<1>(nt, rows, colT, lda, wt, opg, ob, acc, accumulate, side);
    }
    ob += v * Isa::kLanes;
  }
}

// How many times gemm_chunk_all calls side.row() for these sizes.
inline int64_t gemm_row_calls(int64_t nt, int64_t rows, int64_t opg) {
  int64_t calls = 0;
  for (int64_t ob = 0; ob < opg;) {
    const int v = gemm_vectors(opg, ob);
    const int64_t p = Isa::kAccumulators / v;
    calls += (nt + p - 1) / p * rows;
    ob += v * Isa::kLanes;
  }
  return calls;
}

// The vector "HW" sampler of deform_conv3d_cpu_forward.h, written once for every instruction set.
// Included once per ISA next to the GEMM body (deform_conv3d_cpu_gemm.h), inside a `#pragma GCC target`
// region and a namespace that defines `Isa`; no include guard on purpose.
//
// sample_tile_impl for fp32 and deform_dims "HW" (D3Dnet's): each tap is bilinear in (h, w) at an
// integer time index, and the corners of kLanes positions are located at once in vector registers (the
// whole forward measured 6 % faster on AVX-512 than locating one point at a time). A corner outside gets
// weight 0 and a pixel clamped into it, so the gather that follows has no branches. Same validity rule
// and weights as locate_corners: positions are first clamped to [-2, size + 1], so every lane converts
// to a small integer and NaN lands outside, as the comparisons there send it (max(NaN, lo) is lo); a
// zero-weight corner reads a row of zeros instead of being skipped.
inline void sample_tile_hw(const DeformConv3dShape& s, const float* x_cl, const float* offset_n, int64_t l0, int64_t nt,
                           int64_t k0, int64_t k1, const float* zeros, float* colT) {
  using vec = typename Isa::vec;
  using ivec = typename Isa::ivec;
  constexpr int N = Isa::kLanes;
  const int64_t K = s.taps(), L = s.out_spatial(), Kc = k1 - k0, R = s.c * Kc, C = s.c;
  const int64_t cpg = s.c / s.group, cpo = s.c / s.offset_group;
  const int T = static_cast<int>(s.t), H = static_cast<int>(s.h), W = static_cast<int>(s.w);
  alignas(64) int32_t bt[kTilePositions + N], bh[kTilePositions + N], bw[kTilePositions + N];
  for_positions(s, l0, nt, [&](int64_t j, int64_t ot, int64_t oh, int64_t ow) {
    bt[j] = static_cast<int32_t>(ot * s.stride[0] - s.pad[0]);
    bh[j] = static_cast<int32_t>(oh * s.stride[1] - s.pad[1]);
    bw[j] = static_cast<int32_t>(ow * s.stride[2] - s.pad[2]);
  });
  for (int64_t j = nt; j < nt + N; ++j) {  // past nt: any valid position (their results are not used)
    bt[j] = bt[nt - 1], bh[j] = bh[nt - 1], bw[j] = bw[nt - 1];
  }
  const ivec one = Isa::iset1(1), vT = Isa::iset1(T), vH = Isa::iset1(H), vW = Isa::iset1(W);
  const ivec vH1 = Isa::iset1(H - 1), vW1 = Isa::iset1(W - 1), vT1 = Isa::iset1(T - 1);
  const vec lo = Isa::broadcast(-2.0f), hiH = Isa::broadcast(H + 1.0f), hiW = Isa::broadcast(W + 1.0f);
  const vec fone = Isa::broadcast(1.0f);
  // One group and one offset group, channels a whole number of vectors (D3Dnet's 64): a position's
  // taps are interpolated in vector registers with no run bookkeeping (3 % of the forward on AVX2).
  const bool whole_vectors = s.group == 1 && s.offset_group == 1 && C % N == 0;
  alignas(64) int32_t px[4][N];
  alignas(64) float wt[4][N];
  for (int64_t og = 0; og < s.offset_group; ++og) {
    for (int64_t k = k0; k < k1; ++k) {
      const ivec st = Isa::iset1(static_cast<int>((k / (s.k[1] * s.k[2])) * s.dil[0]));
      const vec sh = Isa::broadcast(static_cast<float>(((k / s.k[2]) % s.k[1]) * s.dil[1]));
      const vec sw = Isa::broadcast(static_cast<float>((k % s.k[2]) * s.dil[2]));
      const float* oh = offset_n + ((og * K + k) * s.nd + s.slot[1]) * L + l0;
      const float* ow = offset_n + ((og * K + k) * s.nd + s.slot[2]) * L + l0;
      for (int64_t j0 = 0; j0 < nt; j0 += N) {
        const int nb = static_cast<int>(std::min<int64_t>(N, nt - j0));
        const ivec t = Isa::iadd(Isa::iload(bt + j0), st);
        vec ph = Isa::add(Isa::add(Isa::to_float(Isa::iload(bh + j0)), sh), Isa::load_first(oh + j0, nb));
        vec pw = Isa::add(Isa::add(Isa::to_float(Isa::iload(bw + j0)), sw), Isa::load_first(ow + j0, nb));
        ph = Isa::min(Isa::max(ph, lo), hiH);
        pw = Isa::min(Isa::max(pw, lo), hiW);
        const vec fh0 = Isa::floor(ph), fw0 = Isa::floor(pw);
        const ivec h0 = Isa::to_int(fh0), w0 = Isa::to_int(fw0);
        const ivec h1 = Isa::iadd(h0, one), w1 = Isa::iadd(w0, one);
        const vec fh = Isa::sub(ph, fh0), fw = Isa::sub(pw, fw0);
        const auto vt = Isa::inside(t, vT);
        const vec gh0 = Isa::select(Isa::both(vt, Isa::inside(h0, vH)), Isa::sub(fone, fh));
        const vec gh1 = Isa::select(Isa::both(vt, Isa::inside(h1, vH)), fh);
        const vec gw0 = Isa::select(Isa::inside(w0, vW), Isa::sub(fone, fw));
        const vec gw1 = Isa::select(Isa::inside(w1, vW), fw);
        const ivec tH = Isa::imul(Isa::clamp(t, vT1), vH);
        const ivec r0 = Isa::imul(Isa::iadd(tH, Isa::clamp(h0, vH1)), vW);
        const ivec r1 = Isa::imul(Isa::iadd(tH, Isa::clamp(h1, vH1)), vW);
        const ivec c0 = Isa::clamp(w0, vW1), c1 = Isa::clamp(w1, vW1);
        Isa::istore(px[0], Isa::iadd(r0, c0));
        Isa::istore(px[1], Isa::iadd(r0, c1));
        Isa::istore(px[2], Isa::iadd(r1, c0));
        Isa::istore(px[3], Isa::iadd(r1, c1));
        Isa::store(wt[0], Isa::mul(gh0, gw0));
        Isa::store(wt[1], Isa::mul(gh0, gw1));
        Isa::store(wt[2], Isa::mul(gh1, gw0));
        Isa::store(wt[3], Isa::mul(gh1, gw1));
        for (int j = 0; j < nb; ++j) {
          const float w00 = wt[0][j], w01 = wt[1][j], w10 = wt[2][j], w11 = wt[3][j];
          // A corner without weight (outside the volume, or an integer position) reads zeros, not the
          // clamped pixel: 0 * Inf would be NaN where the reference skips the corner.
          const float* a = w00 != 0.0f ? x_cl + int64_t(px[0][j]) * C : zeros;
          const float* b = w01 != 0.0f ? x_cl + int64_t(px[1][j]) * C : zeros;
          const float* d = w10 != 0.0f ? x_cl + int64_t(px[2][j]) * C : zeros;
          const float* e = w11 != 0.0f ? x_cl + int64_t(px[3][j]) * C : zeros;
          float* row = colT + (j0 + j) * R;
          // A tap on a pixel (zero or integer offsets, e.g. an untrained model's) reads one corner.
          const bool on_pixel = w01 == 0.0f && w10 == 0.0f && w11 == 0.0f;
          if (whole_vectors) {
            float* dst = row + (k - k0) * C;
            const vec v00 = Isa::broadcast(w00), v01 = Isa::broadcast(w01), v10 = Isa::broadcast(w10),
                      v11 = Isa::broadcast(w11);
            if (on_pixel) {
              for (int64_t c = 0; c < C; c += N) Isa::store(dst + c, Isa::mul(v00, Isa::load(a + c)));
              continue;
            }
            for (int64_t c = 0; c < C; c += N) {
              vec acc = Isa::mul(v00, Isa::load(a + c));
              acc = Isa::fmadd(v01, Isa::load(b + c), acc);
              acc = Isa::fmadd(v10, Isa::load(d + c), acc);
              acc = Isa::fmadd(v11, Isa::load(e + c), acc);
              Isa::store(dst + c, acc);
            }
            continue;
          }
          for (int64_t c = og * cpo; c < (og + 1) * cpo;) {  // runs within one channel group
            const int64_t g = s.group == 1 ? 0 : c / cpg, end = std::min((g + 1) * cpg, (og + 1) * cpo);
            float* dst = row + (g * Kc + k - k0) * cpg + (c - g * cpg);
            if (on_pixel) {
              for (int64_t i = 0; i < end - c; ++i) dst[i] = w00 * a[c + i];
            } else {
              for (int64_t i = 0; i < end - c; ++i)
                dst[i] = w00 * a[c + i] + w01 * b[c + i] + w10 * d[c + i] + w11 * e[c + i];
            }
            c = end;
          }
        }
      }
    }
  }
}

// The vector "HW" sampler of deform_conv3d_cpu_forward.h, written once for every instruction set.
// Included once per ISA next to the GEMM body (deform_conv3d_cpu_gemm.h), inside a `#pragma GCC target`
// region and a namespace that defines `Isa`; no include guard on purpose.
//
// For fp32 and deform_dims "HW" (D3Dnet's): each tap is bilinear in (h, w) at an integer time index,
// and the corners of kLanes positions are located at once in vector registers (the whole forward
// measured 6 % faster on AVX-512 than locating one point at a time). A corner outside gets weight 0
// and a pixel clamped into it, so the gather that follows has no branches. Same validity rule and
// weights as locate_corners: positions are first clamped to [-2, size + 1], so every lane converts to
// a small integer and NaN lands outside, as the comparisons there send it (max(NaN, lo) is lo); a
// zero-weight corner reads the row of zeros after the volume (pixel T*H*W of x_cl) instead of being
// skipped, so 0 * Inf never becomes NaN.

// fn(og, k, j0, nb, px, wt) for each offset group og, tap k0 <= k < k1 and block of nb <= kLanes
// positions from l0 + j0: lane j of px[q] the pixel of corner q (00, 01, 10, 11 in (h, w)) of position
// j0 + j in x_cl, of wt[q] its weight; a corner without weight (outside the volume, or an integer
// position) has the row of zeros, pixel T*H*W. Lanes from nb on repeat a valid position.
template <typename Fn>
D3D_ALWAYS_INLINE void locate_hw(const DeformConv3dShape& s, const float* offset_n, int64_t l0, int64_t nt, int64_t k0,
                                 int64_t k1, const Fn& fn) {
  using vec = typename Isa::vec;
  using ivec = typename Isa::ivec;
  constexpr int N = Isa::kLanes;
  const int64_t K = s.taps(), L = s.out_spatial();
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
  const ivec zero_px = Isa::iset1(static_cast<int>(s.in_spatial()));
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
        const vec wt[4] = {Isa::mul(gh0, gw0), Isa::mul(gh0, gw1), Isa::mul(gh1, gw0), Isa::mul(gh1, gw1)};
        const ivec pixel[4] = {Isa::iadd(r0, c0), Isa::iadd(r0, c1), Isa::iadd(r1, c0), Isa::iadd(r1, c1)};
        ivec px[4];
        for (int q = 0; q < 4; ++q) px[q] = Isa::iselect(Isa::nonzero(wt[q]), pixel[q], zero_px);
        fn(og, k, j0, nb, px, wt);
      }
    }
  }
}

// dst[0..C) = w00 * a + w01 * b + w10 * d + w11 * e, C a multiple of kLanes (one position's tap, all
// channels). A tap on a pixel (zero or integer offsets, e.g. an untrained model's) reads one corner.
D3D_ALWAYS_INLINE void interpolate_row(const float* a, const float* b, const float* d, const float* e, float w00,
                                       float w01, float w10, float w11, int64_t C, float* dst) {
  using vec = typename Isa::vec;
  constexpr int N = Isa::kLanes;
  const vec v00 = Isa::broadcast(w00);
  if (w01 == 0.0f && w10 == 0.0f && w11 == 0.0f) {
    for (int64_t c = 0; c < C; c += N) Isa::store(dst + c, Isa::mul(v00, Isa::load(a + c)));
    return;
  }
  const vec v01 = Isa::broadcast(w01), v10 = Isa::broadcast(w10), v11 = Isa::broadcast(w11);
  for (int64_t c = 0; c < C; c += N) {
    vec acc = Isa::mul(v00, Isa::load(a + c));
    acc = Isa::fmadd(v01, Isa::load(b + c), acc);
    acc = Isa::fmadd(v10, Isa::load(d + c), acc);
    acc = Isa::fmadd(v11, Isa::load(e + c), acc);
    Isa::store(dst + c, acc);
  }
}

// Column block colT (see sample_tile_impl) of positions l0 .. l0+nt-1 and taps k0 .. k1-1; x_cl has
// the row of zeros after its T*H*W pixels.
inline void sample_tile_hw(const DeformConv3dShape& s, const float* x_cl, const float* offset_n, int64_t l0, int64_t nt,
                           int64_t k0, int64_t k1, float* colT) {
  using vec = typename Isa::vec;
  using ivec = typename Isa::ivec;
  const int64_t Kc = k1 - k0, R = s.c * Kc, C = s.c;
  const int64_t cpg = s.c / s.group, cpo = s.c / s.offset_group;
  // One group and one offset group, channels a whole number of vectors (D3Dnet's 64): a position's
  // taps are interpolated in vector registers with no run bookkeeping (3 % of the forward on AVX2).
  const bool whole_vectors = s.group == 1 && s.offset_group == 1 && C % Isa::kLanes == 0;
  alignas(64) int32_t px[4][Isa::kLanes];
  alignas(64) float wt[4][Isa::kLanes];
  locate_hw(s, offset_n, l0, nt, k0, k1,
            [&](int64_t og, int64_t k, int64_t j0, int nb, const ivec(&pxv)[4], const vec(&wtv)[4]) {
              for (int q = 0; q < 4; ++q) Isa::istore(px[q], pxv[q]), Isa::store(wt[q], wtv[q]);
              for (int j = 0; j < nb; ++j) {
                const float w00 = wt[0][j], w01 = wt[1][j], w10 = wt[2][j], w11 = wt[3][j];
                const float* a = x_cl + int64_t(px[0][j]) * C;
                const float* b = x_cl + int64_t(px[1][j]) * C;
                const float* d = x_cl + int64_t(px[2][j]) * C;
                const float* e = x_cl + int64_t(px[3][j]) * C;
                float* row = colT + (j0 + j) * R;
                if (whole_vectors) {
                  interpolate_row(a, b, d, e, w00, w01, w10, w11, C, row + (k - k0) * C);
                  continue;
                }
                const bool on_pixel = w01 == 0.0f && w10 == 0.0f && w11 == 0.0f;
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
            });
}

// The located taps of positions l0 .. l0+nt-1 and taps k0 .. k1-1 (one offset group): tap (k, j) at
// index (k - k0) * taps.stride + j of each plane (pixels as locate_hw gives them). Written with vector
// stores, lanes past nt included (taps.stride >= nt rounded up).
inline void locate_taps_hw(const DeformConv3dShape& s, const float* offset_n, int64_t l0, int64_t nt, int64_t k0,
                           int64_t k1, const LocatedTaps& taps) {
  using vec = typename Isa::vec;
  using ivec = typename Isa::ivec;
  locate_hw(s, offset_n, l0, nt, k0, k1,
            [&](int64_t, int64_t k, int64_t j0, int, const ivec(&px)[4], const vec(&wt)[4]) {
              const int64_t i = (k - k0) * taps.stride + j0;
              for (int q = 0; q < 4; ++q) Isa::istore(taps.px[q] + i, px[q]), Isa::store(taps.w[q] + i, wt[q]);
            });
}

// Interpolates located taps into a column block, one tap per call of row() every `every` calls: the
// GEMM of the previous chunk calls it after each of its rows (gemm_block's side), so the gathers'
// loads and the GEMM's FMAs run side by side instead of one after the other. Position by position,
// each position's taps in turn: neighbouring positions read nearly the same pixels, which are then
// still in L1 (tap by tap, a tile's row of pixels lay between two reads of a pixel). Tap (k, j) of the
// located planes goes to col + j * R + (k - k0) * C.
struct TapGather {
  LocatedTaps taps;
  const float* x_cl = nullptr;
  int64_t C = 0, R = 0, kc = 0;           // channels, column row length, taps in the chunk
  int64_t i = 0, j = 0, k = 0, left = 0;  // plane index of the next tap, its position and tap, taps left
  float* col = nullptr;
  float* dst = nullptr;
  int64_t every = 1, countdown = 1;

  D3D_ALWAYS_INLINE void one() {
    interpolate_row(x_cl + int64_t(taps.px[0][i]) * C, x_cl + int64_t(taps.px[1][i]) * C,
                    x_cl + int64_t(taps.px[2][i]) * C, x_cl + int64_t(taps.px[3][i]) * C, taps.w[0][i], taps.w[1][i],
                    taps.w[2][i], taps.w[3][i], C, dst);
    --left;
    if (++k == kc) {
      k = 0, i = ++j, dst = col + j * R;
    } else {
      i += taps.stride, dst += C;
    }
  }
  D3D_ALWAYS_INLINE void row() {
    if (--countdown == 0) {
      countdown = every;
      if (left > 0) one();
    }
  }
  void drain() {
    while (left > 0) one();
  }
};

// The own-GEMM forward of tiles [t0, t1) of one batch item as a pipeline over (tile, chunk of taps):
// the chunk i + 1 is located, then gathered into one column buffer while the GEMM multiplies chunk i
// from the other. Needs one group, one offset group, C and O/G multiples of kLanes (pipeline_applies).
//   wp: the weight packed [K, C, O]; bufs: pipeline_buffer_elems(s, tile, kc) floats, cache-line aligned.
inline void forward_tiles_pipelined(const DeformConv3dShape& s, const float* x_cl, const float* offset_n,
                                    const float* wp, const float* bias, float* y_n, int64_t tile, int64_t kc,
                                    int64_t t0, int64_t t1, float* bufs) {
  const int64_t K = s.taps(), L = s.out_spatial(), C = s.c, O = s.o;
  const int64_t chunks = (K + kc - 1) / kc, items = (t1 - t0) * chunks;
  if (items <= 0) return;
  float* col[2] = {bufs, bufs + tile * C * kc};
  float* acc = col[1] + tile * C * kc;
  const LocatedTaps taps = LocatedTaps::in(acc + tile * O, tile, kc);
  struct Item {
    int64_t l0, nt, k0, k1;
  };
  auto item = [&](int64_t i) {
    const int64_t l0 = (t0 + i / chunks) * tile, k0 = (i % chunks) * kc;
    return Item{l0, std::min(tile, L - l0), k0, std::min(K, k0 + kc)};
  };
  // Locates item i and returns the gather that fills its column buffer.
  auto prepare = [&](int64_t i) {
    const Item it = item(i);
    locate_taps_hw(s, offset_n, it.l0, it.nt, it.k0, it.k1, taps);
    TapGather g;
    g.taps = taps, g.left = (it.k1 - it.k0) * it.nt;
    g.x_cl = x_cl, g.C = C, g.R = C * (it.k1 - it.k0), g.kc = it.k1 - it.k0;
    g.col = g.dst = col[i & 1];
    return g;
  };
  TapGather first = prepare(0);
  first.drain();
  for (int64_t i = 0; i < items; ++i) {
    const Item it = item(i);
    const int64_t crows = (it.k1 - it.k0) * C;
    TapGather next;
    if (i + 1 < items) {
      next = prepare(i + 1);
      // Spread the next chunk's taps evenly over the GEMM's rows; what is left is gathered after.
      const int64_t calls = gemm_row_calls(it.nt, crows, O);
      next.every = next.countdown = std::max<int64_t>(1, calls / std::max<int64_t>(1, next.left));
    }
    gemm_chunk_all(it.nt, crows, col[i & 1], crows, wp + it.k0 * C * O, O, acc, it.k0 > 0, next);
    next.drain();
    if (it.k1 == K) store_tile(acc, it.nt, 1, O, bias, y_n + it.l0, L);
  }
}

//! The f32 CPU implementation on plain slices: im2col / col2im and the three GEMMs of a
//! convolution (forward, input gradient, kernel gradient).
//!
//! Layout. Tensors are NCHW and contiguous. For a group of `g` images, the im2col matrix `col` is
//! `[K, L]` row-major with `K = C_in·kh·kw` and `L = g·H_out·W_out`: row `(ci, ky, kx)` holds the
//! input plane `ci` shifted by `(ky, kx)` for every output position of every image of the group.
//! Every GEMM is then given to the `gemm` crate with the `L` (pixels) dimension as its `m`, the
//! dimension its micro-kernel vectorises over and which must be large to be efficient, and the
//! channel counts as `n` and `k`. Seen as column-major `[L, C_out]`, the output of one image is
//! exactly its NCHW plane block, so with one image per group the GEMM writes the output in place.
//!
//! Small images (the 7×7 and 14×14 stages of a CIFAR/MNIST ResNet) give a short `L`, so several
//! images are put side by side in one GEMM and the result is scattered back to NCHW (a copy of the
//! output, cheap next to the GEMM). Groups run in parallel on rayon when there are enough of them;
//! otherwise the groups run one after the other and the GEMM and the im2col copies are
//! parallelised inside.

use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Shape of one convolution: input `[batch, cin, h, w]`, kernel `[cout, cin, kh, kw]`, output
/// `[batch, cout, ho, wo]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub padding: usize,
    pub ho: usize,
    pub wo: usize,
}

/// The GEMM `m` a group aims for: below a few hundred rows the micro-kernel's fixed costs
/// (packing, edge tiles) dominate.
const TARGET_ROWS: usize = 512;

/// The im2col matrix of one large image (a 3×3 conv of 64 channels at 256×256 is 150 MB) is cut
/// into bands of output rows of about this many elements (1 MB, a core's L2), so each band is
/// built and consumed while it is still in cache instead of making a round trip through memory.
/// Measured on StyleGAN2's batch-1 convs (`benches/conv.rs`): 131k–524k elements are equally fast,
/// and 1.2–2× faster than the whole image at once.
const BAND_ELEMS: usize = 1 << 18;

impl Geometry {
    /// Output size per spatial dim, or `None` if the kernel does not fit the padded input.
    pub fn new(
        (batch, cin, h, w): (usize, usize, usize, usize),
        (cout, kcin, kh, kw): (usize, usize, usize, usize),
        stride: usize,
        padding: usize,
    ) -> Option<Self> {
        if cin != kcin || stride == 0 || kh == 0 || kw == 0 {
            return None;
        }
        let ph = (h + 2 * padding).checked_sub(kh)?;
        let pw = (w + 2 * padding).checked_sub(kw)?;
        Some(Self {
            batch,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            stride,
            padding,
            ho: ph / stride + 1,
            wo: pw / stride + 1,
        })
    }

    fn hw_in(&self) -> usize {
        self.h * self.w
    }

    fn hw_out(&self) -> usize {
        self.ho * self.wo
    }

    /// Rows of the im2col matrix (the GEMM reduction length of the forward pass).
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// A 1×1, stride 1, unpadded convolution: one image's input is already its im2col matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }

    /// Floating-point operations of the forward pass (2 per multiply-add).
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.cout * self.hw_out() * self.k()) as f64
    }

    /// Images per GEMM and whether groups run in parallel (else the work inside a group is).
    /// Output rows per band when the forward pass of one image goes band by band (see
    /// [`BAND_ELEMS`]): a non-pointwise conv of large images whose im2col matrix is bigger than one
    /// band. Bands keep at least [`TARGET_ROWS`] GEMM rows.
    fn band_rows(&self) -> Option<usize> {
        let hw = self.hw_out();
        if self.is_pointwise() || hw < TARGET_ROWS || self.k() * hw <= BAND_ELEMS {
            return None;
        }
        let min_rows = TARGET_ROWS.div_ceil(self.wo);
        let rows = (BAND_ELEMS / self.k() / self.wo).max(min_rows);
        (rows < self.ho).then_some(rows)
    }

    fn plan(&self) -> Plan {
        let threads = rayon::current_num_threads().max(1);
        let hw = self.hw_out().max(1);
        let group = TARGET_ROWS.div_ceil(hw).clamp(1, self.batch.max(1));
        let groups = self.batch.div_ceil(group);
        // Parallel groups need enough of them to balance: with fewer, one thread would idle for
        // a whole group, which costs more than splitting each GEMM.
        let par_groups = threads > 1 && groups >= 2 * threads;
        let inner = if threads > 1 && !par_groups {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        Plan {
            group,
            par_groups,
            inner,
        }
    }
}

struct Plan {
    group: usize,
    par_groups: bool,
    inner: Parallelism,
}

/// One group of images: `g` images from `b0`, `l = g·hw_out` GEMM rows.
struct Group {
    b0: usize,
    l: usize,
    /// One image: outputs and gradients are used in place, without gather/scatter copies.
    direct: bool,
    /// Parallelise inside the group (groups themselves run one after the other).
    inside: bool,
}

impl Plan {
    fn group_at(&self, gi: usize, geo: &Geometry) -> Group {
        let b0 = gi * self.group;
        let g = self.group.min(geo.batch - b0);
        Group {
            b0,
            l: g * geo.hw_out(),
            direct: g == 1,
            inside: !self.par_groups,
        }
    }
}

impl Geometry {
    /// Scratch the im2col matrix of a group needs (0 when the input is used in place).
    fn col_len(&self, grp: &Group) -> usize {
        if grp.direct && self.is_pointwise() {
            0
        } else {
            self.k() * grp.l
        }
    }

    /// The group's im2col matrix `[K, L]`: the input itself for a pointwise conv of one image,
    /// else built in `scratch` (of [`Self::col_len`] elements).
    fn col<'a>(&self, x: &'a [f32], grp: &Group, scratch: &'a mut [f32]) -> &'a [f32] {
        if scratch.is_empty() {
            &x[grp.b0 * self.cin * self.hw_in()..][..self.k() * grp.l]
        } else {
            im2col(x, self, grp.b0, scratch, grp.inside);
            scratch
        }
    }

    /// The group's output gradient as one `[C_out, L]` matrix: `dy` itself for one image, else
    /// gathered into `scratch`.
    fn dy_matrix<'a>(&self, dy: &'a [f32], grp: &Group, scratch: &'a mut [f32]) -> &'a [f32] {
        let src = &dy[grp.b0 * self.cout * self.hw_out()..][..self.cout * grp.l];
        if grp.direct {
            src
        } else {
            gather(src, scratch, self.cout, self.hw_out());
            scratch
        }
    }
}

/// A vector of `n` f32 written in full by `fill`, which gets the uninitialised storage (and
/// returns [`init_all`]'s proof once every element is written).
///
/// Zero-filling such an output first is a whole extra pass over memory (8 % of a training step
/// on this crate's benchmark).
pub(crate) fn output_buffer(
    n: usize,
    fill: impl FnOnce(&mut [MaybeUninit<f32>]) -> Initialised,
) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    let Initialised(done) = fill(&mut v.spare_capacity_mut()[..n]);
    assert_eq!(done, n, "an output buffer was not written in full");
    // SAFETY: `fill` wrote all `n` elements (it returns `Initialised(n)` only through
    // `init_all`, which it calls on the whole buffer once every element is written).
    unsafe { v.set_len(n) };
    v
}

/// Proof, returned by an [`output_buffer`] filler, that its `n` elements were written.
pub(crate) struct Initialised(usize);

/// Marks a buffer every element of which has been written (through `MaybeUninit::write`, a
/// `*_uninit` helper or a raw-pointer kernel) as initialised.
///
/// # Safety
/// Every element of `buf` must have been written.
pub(crate) unsafe fn init_all(buf: &mut [MaybeUninit<f32>]) -> Initialised {
    Initialised(buf.len())
}

/// A written `MaybeUninit` slice as plain floats.
///
/// # Safety
/// Every element of `buf` must have been written.
pub(crate) unsafe fn assume_init_mut(buf: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: same layout; initialised per the caller's contract.
    unsafe { &mut *(buf as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

thread_local! {
    /// Per-thread scratch (im2col matrix, gathered gradient, GEMM result) kept between calls so
    /// that a training step does not page-fault fresh buffers for every convolution.
    static SCRATCH: RefCell<[Vec<f32>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

fn with_scratch<R>(n0: usize, n1: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut s) => {
            let [a, b] = &mut *s;
            if a.len() < n0 {
                a.resize(n0, 0.0);
            }
            if b.len() < n1 {
                b.resize(n1, 0.0);
            }
            f(&mut a[..n0], &mut b[..n1])
        }
        // Re-entered on this thread (a rayon worker that stole another convolution's job while
        // waiting inside a GEMM): use fresh buffers rather than fail.
        Err(_) => f(&mut vec![0.0; n0], &mut vec![0.0; n1]),
    })
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` with `accumulate`, in the `gemm` crate's convention:
/// an `m×n` destination, `_cs`/`_rs` the column/row strides in elements.
#[allow(clippy::too_many_arguments)]
fn gemm_f32(
    dims: (usize, usize, usize),
    dst: &mut [f32],
    dst_strides: (usize, usize),
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    par: Parallelism,
) {
    // SAFETY: `dst` is an initialised, exclusively borrowed slice of `dst.len()` elements.
    unsafe {
        gemm_f32_raw(
            dims,
            (dst.as_mut_ptr(), dst.len()),
            dst_strides,
            accumulate,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            par,
        )
    }
}

/// [`gemm_f32`] into `len` elements at `dst`, which may be uninitialised when `accumulate` is
/// false (the product is then written without reading `dst`).
///
/// # Safety
/// `dst` must be valid for writes of `len` elements (and reads, when `accumulate`), and must
/// not alias `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32_raw(
    (m, n, k): (usize, usize, usize),
    (dst, dst_len): (*mut f32, usize),
    (dst_cs, dst_rs): (usize, usize),
    accumulate: bool,
    lhs: &[f32],
    (lhs_cs, lhs_rs): (usize, usize),
    rhs: &[f32],
    (rhs_cs, rhs_rs): (usize, usize),
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The largest element each operand's strides reach must be inside its slice; this is what
    // makes the raw-pointer call below sound.
    let reach = |rows: usize, cols: usize, cs: usize, rs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    assert!(
        reach(m, n, dst_cs, dst_rs) <= dst_len,
        "gemm dst out of bounds"
    );
    assert!(
        reach(m, k, lhs_cs, lhs_rs) <= lhs.len(),
        "gemm lhs out of bounds"
    );
    assert!(
        reach(k, n, rhs_cs, rhs_rs) <= rhs.len(),
        "gemm rhs out of bounds"
    );
    if k == 0 {
        if !accumulate {
            for j in 0..n {
                for i in 0..m {
                    // SAFETY: in bounds (checked above), writable per the contract.
                    unsafe { dst.add(i * dst_rs + j * dst_cs).write(0.0) };
                }
            }
        }
        return;
    }
    // SAFETY: every index the GEMM touches is within the slices (checked above); `dst` does not
    // alias `lhs` or `rhs` (the caller's contract); with `accumulate` false gemm only writes it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Output positions `ox` whose input column `ox·s + kx − p` lies inside `[0, w)`.
#[inline]
fn valid_range(kx: usize, p: usize, s: usize, w: usize, wo: usize) -> (usize, usize) {
    let lo = if p > kx { (p - kx).div_ceil(s) } else { 0 }.min(wo);
    let hi = if w + p > kx {
        (w + p - kx).div_ceil(s)
    } else {
        0
    }
    .clamp(lo, wo);
    (lo, hi)
}

/// Fills row `r = (ci, ky, kx)` of the im2col matrix for images `b0..b0+g` of `x`.
fn im2col_row(x: &[f32], geo: &Geometry, b0: usize, r: usize, row: &mut [f32]) {
    let ci = r / (geo.kh * geo.kw);
    for (j, out) in row.chunks_exact_mut(geo.hw_out()).enumerate() {
        let plane = &x[((b0 + j) * geo.cin + ci) * geo.hw_in()..][..geo.hw_in()];
        im2col_tap(plane, geo, r, 0, out);
    }
}

/// Tap `r = (ci, ky, kx)` of one input plane for the output rows `oy0..` that `out` (whole
/// output rows) holds.
fn im2col_tap(plane: &[f32], geo: &Geometry, r: usize, oy0: usize, out: &mut [f32]) {
    let (kh, kw, s, p) = (geo.kh, geo.kw, geo.stride, geo.padding);
    let (ky, kx) = ((r / kw) % kh, r % kw);
    let wo = geo.wo;
    let (lo, hi) = valid_range(kx, p, s, geo.w, wo);
    for (dy, orow) in out.chunks_exact_mut(wo).enumerate() {
        let iy = (oy0 + dy) * s + ky;
        if iy < p || iy - p >= geo.h {
            orow.fill(0.0);
            continue;
        }
        let irow = &plane[(iy - p) * geo.w..][..geo.w];
        orow[..lo].fill(0.0);
        orow[hi..].fill(0.0);
        if lo == hi {
            // The tap reads only padding on this row (kernel wider than the padded input).
        } else if s == 1 {
            let ix0 = lo + kx - p;
            orow[lo..hi].copy_from_slice(&irow[ix0..ix0 + (hi - lo)]);
        } else {
            for (ox, o) in orow[lo..hi].iter_mut().enumerate() {
                *o = irow[(lo + ox) * s + kx - p];
            }
        }
    }
}

/// im2col of images `b0..b0+g` into `col` (`[K, g·hw_out]`).
fn im2col(x: &[f32], geo: &Geometry, b0: usize, col: &mut [f32], parallel: bool) {
    let l = col.len() / geo.k();
    if parallel {
        col.par_chunks_mut(l)
            .with_min_len(4)
            .enumerate()
            .for_each(|(r, row)| im2col_row(x, geo, b0, r, row));
    } else {
        for (r, row) in col.chunks_mut(l).enumerate() {
            im2col_row(x, geo, b0, r, row);
        }
    }
}

/// Adds the rows of `dcol` (`[K, g·hw_out]`) back into the input planes they were read from:
/// `dx` holds the `g` images of the group, zeroed or partially summed.
fn col2im(dcol: &[f32], geo: &Geometry, dx: &mut [f32], parallel: bool) {
    let (kh, kw, s, p) = (geo.kh, geo.kw, geo.stride, geo.padding);
    let (hw, wo, w) = (geo.hw_out(), geo.wo, geo.w);
    let l = dcol.len() / geo.k();
    let plane_fn = |idx: usize, plane: &mut [f32]| {
        let (j, ci) = (idx / geo.cin, idx % geo.cin);
        for ky in 0..kh {
            for kx in 0..kw {
                let r = (ci * kh + ky) * kw + kx;
                let src = &dcol[r * l + j * hw..][..hw];
                let (lo, hi) = valid_range(kx, p, s, w, wo);
                for (oy, srow) in src.chunks_exact(wo).enumerate() {
                    let iy = oy * s + ky;
                    if iy < p || iy - p >= geo.h {
                        continue;
                    }
                    let irow = &mut plane[(iy - p) * w..][..w];
                    if lo == hi {
                        continue;
                    }
                    if s == 1 {
                        let ix0 = lo + kx - p;
                        for (d, v) in irow[ix0..ix0 + (hi - lo)].iter_mut().zip(&srow[lo..hi]) {
                            *d += v;
                        }
                    } else {
                        for ox in lo..hi {
                            irow[ox * s + kx - p] += srow[ox];
                        }
                    }
                }
            }
        }
    };
    if parallel {
        dx.par_chunks_mut(geo.hw_in())
            .enumerate()
            .for_each(|(i, pl)| plane_fn(i, pl));
    } else {
        for (i, pl) in dx.chunks_mut(geo.hw_in()).enumerate() {
            plane_fn(i, pl);
        }
    }
}

/// Gathers `g` images of `[C, hw]` (NCHW) into one `[C, g·hw]` matrix.
fn gather(nchw: &[f32], grouped: &mut [f32], c: usize, hw: usize) {
    let g = nchw.len() / (c * hw);
    for j in 0..g {
        for ch in 0..c {
            grouped[ch * g * hw + j * hw..][..hw].copy_from_slice(&nchw[(j * c + ch) * hw..][..hw]);
        }
    }
}

/// The inverse of [`gather`].
fn scatter(grouped: &[f32], nchw: &mut [MaybeUninit<f32>], c: usize, hw: usize) {
    let g = nchw.len() / (c * hw);
    for j in 0..g {
        for ch in 0..c {
            copy_uninit(
                &mut nchw[(j * c + ch) * hw..][..hw],
                &grouped[ch * g * hw + j * hw..][..hw],
            );
        }
    }
}

/// `dst.copy_from_slice(src)` into uninitialised storage.
pub(crate) fn copy_uninit(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// Runs `f(group index, chunk)` over `data` cut into chunks of `group · per_image` elements,
/// in parallel when the plan says so.
fn for_groups<T: Send>(
    data: &mut [T],
    per_image: usize,
    plan: &Plan,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    let chunk = (plan.group * per_image).max(1);
    if plan.par_groups {
        data.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(gi, c)| f(gi, c));
    } else {
        for (gi, c) in data.chunks_mut(chunk).enumerate() {
            f(gi, c);
        }
    }
}

/// Adds `bias[c]` to every plane of `c` in `[g, C, hw]` NCHW data.
fn add_bias(out: &mut [f32], bias: &[f32], hw: usize) {
    for (i, plane) in out.chunks_exact_mut(hw).enumerate() {
        let b = bias[i % bias.len()];
        for v in plane {
            *v += b;
        }
    }
}

/// Forward convolution: `x` `[B, C_in, H, W]`, `w` `[C_out, C_in, kh, kw]`, optional `bias`
/// `[C_out]` → `[B, C_out, H_o, W_o]`. The bias is added to each group's output right after its
/// GEMM, while it is still in cache.
pub fn conv2d_forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, geo: &Geometry) -> Vec<f32> {
    assert_eq!(
        x.len(),
        geo.batch * geo.cin * geo.hw_in(),
        "input and geometry disagree"
    );
    assert_eq!(w.len(), geo.cout * geo.k(), "kernel and geometry disagree");
    if let Some(b) = bias {
        // The banded path writes `cout` bias planes through raw pointers.
        assert_eq!(
            b.len(),
            geo.cout,
            "bias length and output channels disagree"
        );
    }
    if let Some(rows) = geo.band_rows() {
        return conv2d_forward_banded(x, w, bias, geo, rows);
    }
    let plan = geo.plan();
    let (hw, k, cout) = (geo.hw_out(), geo.k(), geo.cout);
    output_buffer(geo.batch * cout * hw, |out| {
        for_groups(out, cout * hw, &plan, |gi, og| {
            let grp = plan.group_at(gi, geo);
            let l = grp.l;
            let tmp_len = if grp.direct { 0 } else { cout * l };
            with_scratch(geo.col_len(&grp), tmp_len, |col, tmp| {
                let lhs = geo.col(x, &grp, col);
                // A direct group's GEMM writes its output in place; the others go through `tmp`
                // and are scattered into it.
                let dst = if grp.direct {
                    assert_eq!(og.len(), l * cout, "a direct group is its whole output");
                    (og.as_mut_ptr().cast::<f32>(), og.len())
                } else {
                    (tmp.as_mut_ptr(), tmp.len())
                };
                // SAFETY: `dst` is exclusively ours (this group's output or its scratch), with
                // `dst.1` elements; without `accumulate` the GEMM writes all `l · cout` of them
                // and reads none.
                unsafe {
                    gemm_f32_raw(
                        (l, cout, k),
                        dst,
                        (l, 1),
                        false,
                        lhs,
                        (l, 1),
                        w,
                        (k, 1),
                        plan.inner,
                    )
                };
                if !grp.direct {
                    scatter(tmp, og, cout, hw);
                }
                // SAFETY: written in full just above.
                let og = unsafe { assume_init_mut(og) };
                if let Some(b) = bias {
                    add_bias(og, b, hw);
                }
            })
        });
        // SAFETY: every group's chunk was written above.
        unsafe { init_all(out) }
    })
}

/// A pointer that tasks writing disjoint parts of one buffer share.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: each task writes only its own elements (see `conv2d_forward_banded`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The element `off` places on (a method, so closures capture the whole `SharedOut`).
    fn at(self, off: usize) -> *mut f32 {
        self.0.wrapping_add(off)
    }
}

/// [`conv2d_forward`] one band of `rows` output rows at a time: every (image, band) is one task
/// (im2col of the band, then its GEMM straight into the output and the bias), run in parallel.
/// The bands of an image are the same whatever the batch, so a sample does not depend on the
/// batch it is computed in.
fn conv2d_forward_banded(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    geo: &Geometry,
    rows: usize,
) -> Vec<f32> {
    let (hw, k, cout, wo) = (geo.hw_out(), geo.k(), geo.cout, geo.wo);
    let bands = geo.ho.div_ceil(rows);
    output_buffer(geo.batch * cout * hw, |out| {
        let len = out.len();
        let base = SharedOut(out.as_mut_ptr().cast::<f32>());
        (0..geo.batch * bands).into_par_iter().for_each(|t| {
            let (b, band) = (t / bands, t % bands);
            let oy0 = band * rows;
            let m = rows.min(geo.ho - oy0) * wo;
            let off = b * cout * hw + oy0 * wo;
            with_scratch(k * m, 0, |col, _| {
                for (r, row) in col.chunks_exact_mut(m).enumerate() {
                    let ci = r / (geo.kh * geo.kw);
                    let plane = &x[(b * geo.cin + ci) * geo.hw_in()..][..geo.hw_in()];
                    im2col_tap(plane, geo, r, oy0, row);
                }
                // SAFETY: this band's elements (pixels `oy0·wo..+m` of every channel plane of
                // image `b`) are written by this task only, and lie within `out` (`len - off`
                // elements from `off`); without `accumulate` the GEMM reads none of them.
                unsafe {
                    let dst = base.at(off);
                    gemm_f32_raw(
                        (m, cout, k),
                        (dst, len - off),
                        (hw, 1),
                        false,
                        col,
                        (m, 1),
                        w,
                        (k, 1),
                        Parallelism::None,
                    );
                    if let Some(bias) = bias {
                        for (c, &bc) in bias.iter().enumerate() {
                            for v in std::slice::from_raw_parts_mut(dst.add(c * hw), m) {
                                *v += bc;
                            }
                        }
                    }
                }
            })
        });
        // SAFETY: the bands of every image cover its output, and every band was written above.
        unsafe { init_all(out) }
    })
}

/// Input gradient: `dy` `[B, C_out, H_o, W_o]`, `w` → `dx` `[B, C_in, H, W]`
/// (one GEMM `Wᵀ·dy` per group, then col2im).
pub fn conv2d_backward_input(dy: &[f32], w: &[f32], geo: &Geometry) -> Vec<f32> {
    let plan = geo.plan();
    let (k, cout) = (geo.k(), geo.cout);
    let mut dx = vec![0f32; geo.batch * geo.cin * geo.hw_in()];
    for_groups(&mut dx, geo.cin * geo.hw_in(), &plan, |gi, dxg| {
        let grp = plan.group_at(gi, geo);
        let l = grp.l;
        let in_place = grp.direct && geo.is_pointwise();
        let dcol_len = if in_place { 0 } else { k * l };
        let dy_len = if grp.direct { 0 } else { cout * l };
        with_scratch(dcol_len, dy_len, |dcol, dyg| {
            let lhs = geo.dy_matrix(dy, &grp, dyg);
            let gemm_into = |dst: &mut [f32]| {
                gemm_f32(
                    (l, k, cout),
                    dst,
                    (l, 1),
                    false,
                    lhs,
                    (l, 1),
                    w,
                    (1, k),
                    plan.inner,
                )
            };
            if in_place {
                gemm_into(dxg);
            } else {
                gemm_into(dcol);
                col2im(dcol, geo, dxg, grp.inside);
            }
        })
    });
    dx
}

/// Kernel gradient: `x`, `dy` → `dw` `[C_out, C_in, kh, kw]`, one GEMM `dy·colᵀ` per group summed
/// over groups (per-thread partial sums when groups run in parallel).
pub fn conv2d_backward_kernel(x: &[f32], dy: &[f32], geo: &Geometry) -> Vec<f32> {
    let plan = geo.plan();
    let (k, cout) = (geo.k(), geo.cout);
    let groups = geo.batch.div_ceil(plan.group);
    let one = |gi: usize, acc: &mut [f32], first: bool| {
        let grp = plan.group_at(gi, geo);
        let l = grp.l;
        let dy_len = if grp.direct { 0 } else { cout * l };
        with_scratch(geo.col_len(&grp), dy_len, |col, dyg| {
            let lhs = geo.col(x, &grp, col);
            let rhs = geo.dy_matrix(dy, &grp, dyg);
            gemm_f32(
                (k, cout, l),
                acc,
                (k, 1),
                !first,
                lhs,
                (1, l),
                rhs,
                (l, 1),
                plan.inner,
            );
        })
    };
    if plan.par_groups {
        (0..groups)
            .into_par_iter()
            .fold(
                || (vec![0f32; cout * k], true),
                |(mut acc, first), gi| {
                    one(gi, &mut acc, first);
                    (acc, false)
                },
            )
            .map(|(acc, _)| acc)
            .reduce(
                || vec![0f32; cout * k],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(&b) {
                        *x += y;
                    }
                    a
                },
            )
    } else {
        let mut acc = vec![0f32; cout * k];
        for gi in 0..groups {
            one(gi, &mut acc, gi == 0);
        }
        acc
    }
}

//! Convolution micro-benchmark: GFLOP/s of `genrep_kernels::conv2d`, candle's `conv2d` and (when
//! `GENREP_BENCH_PYTHON` names a Python with torch) PyTorch's, side by side in one run with the
//! same thread count, on the shapes BigGAN-deep-128 and the client's default encoder run, plus the
//! machine's f32 GEMM rate on a large square matmul (candle and PyTorch) and our % of it.
//!
//!     GENREP_BENCH_PYTHON=/path/to/venv/bin/python cargo bench -p genrep-kernels --bench conv
//!
//! `fwd` is the forward pass; `train` is forward + input and kernel gradients (3× the forward's
//! multiply-adds) through candle's autograd (`y.backward()`, so it includes candle's gradient
//! bookkeeping) and through `y.backward(r)` in PyTorch, measured for the encoder shapes only (candle's own backward on the generator
//! shapes would take minutes and the generator never trains here).

mod support;

use candle_core::{Device, Tensor, Var};
use std::time::Instant;
use support::torch_reference;

/// (label, [batch, cin, h, w, cout, k, stride, padding], train)
const SHAPES: &[(&str, [usize; 8], bool)] = &[
    ("biggan 3x3 512 @4 b8", [8, 512, 4, 4, 512, 3, 1, 1], false),
    ("biggan 3x3 512 @8 b8", [8, 512, 8, 8, 512, 3, 1, 1], false),
    (
        "biggan 3x3 256 @16 b8",
        [8, 256, 16, 16, 256, 3, 1, 1],
        false,
    ),
    (
        "biggan 3x3 256 @32 b8",
        [8, 256, 32, 32, 256, 3, 1, 1],
        false,
    ),
    (
        "biggan 3x3 128 @64 b8",
        [8, 128, 64, 64, 128, 3, 1, 1],
        false,
    ),
    (
        "biggan 3x3 64 @128 b8",
        [8, 64, 128, 128, 64, 3, 1, 1],
        false,
    ),
    (
        "biggan 3x3 64 @128 b1",
        [1, 64, 128, 128, 64, 3, 1, 1],
        false,
    ),
    (
        "biggan rgb 128->3 @128 b8",
        [8, 128, 128, 128, 3, 3, 1, 1],
        false,
    ),
    (
        "biggan 1x1 2048->512 @4 b8",
        [8, 2048, 4, 4, 512, 1, 1, 0],
        false,
    ),
    (
        "biggan 1x1 512->2048 @8 b8",
        [8, 512, 8, 8, 2048, 1, 1, 0],
        false,
    ),
    (
        "biggan 1x1 256->64 @64 b8",
        [8, 256, 64, 64, 64, 1, 1, 0],
        false,
    ),
    (
        "biggan 1x1 64->128 @128 b8",
        [8, 64, 128, 128, 128, 1, 1, 0],
        false,
    ),
    // StyleGAN2 paper256 at batch 1: the convs of the 256, 128 and 64 blocks (an up-sampling
    // conv runs as four phase kernels: `4·O` outputs at the input size).
    ("sg2 3x3 64 @256 b1", [1, 64, 256, 256, 64, 3, 1, 1], false),
    (
        "sg2 up 128->64 @128 b1",
        [1, 128, 128, 128, 256, 3, 1, 1],
        false,
    ),
    (
        "sg2 3x3 128 @128 b1",
        [1, 128, 128, 128, 128, 3, 1, 1],
        false,
    ),
    (
        "sg2 up 256->128 @64 b1",
        [1, 256, 64, 64, 512, 3, 1, 1],
        false,
    ),
    ("sg2 3x3 256 @64 b1", [1, 256, 64, 64, 256, 3, 1, 1], false),
    ("sg2 3x3 512 @32 b1", [1, 512, 32, 32, 512, 3, 1, 1], false),
    (
        "encoder stem 1->16 @28",
        [512, 1, 28, 28, 16, 3, 1, 1],
        true,
    ),
    ("encoder 3x3 16 @28", [512, 16, 28, 28, 16, 3, 1, 1], true),
    (
        "encoder 3x3 16->32 s2 @28",
        [512, 16, 28, 28, 32, 3, 2, 1],
        true,
    ),
    ("encoder 3x3 32 @14", [512, 32, 14, 14, 32, 3, 1, 1], true),
    (
        "encoder 1x1 16->32 s2 @28",
        [512, 16, 28, 28, 32, 1, 2, 0],
        true,
    ),
    (
        "encoder 3x3 32->64 s2 @14",
        [512, 32, 14, 14, 64, 3, 2, 1],
        true,
    ),
    ("encoder 3x3 64 @7", [512, 64, 7, 7, 64, 3, 1, 1], true),
];

fn flops(s: &[usize; 8]) -> f64 {
    let [b, cin, h, w, cout, k, st, p] = *s;
    let ho = (h + 2 * p - k) / st + 1;
    let wo = (w + 2 * p - k) / st + 1;
    2.0 * (b * cout * ho * wo * cin * k * k) as f64
}

/// GFLOP/s of `f`, repeated for at least `min_s` seconds (and twice) after one warm-up call.
fn rate(mut f: impl FnMut(), flop: f64, min_s: f64) -> f64 {
    f();
    let t = Instant::now();
    let mut n = 0;
    while n < 2 || t.elapsed().as_secs_f64() < min_s {
        f();
        n += 1;
    }
    flop * n as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn randn(dims: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1f32, dims, &Device::Cpu).unwrap()
}

struct Torch {
    gemm: f64,
    rows: Vec<(f64, f64)>,
    version: String,
}

/// Runs `tools/bench_conv_reference.py` with the same shapes and thread count, if asked to.
fn torch_side(threads: usize, min_s: f64) -> Option<Torch> {
    let shapes: Vec<Vec<usize>> = SHAPES.iter().map(|s| s.1.to_vec()).collect();
    let shapes = format!("{shapes:?}");
    std::env::set_var("BENCH_MIN_TIME", min_s.to_string());
    let lines = torch_reference(
        "bench_conv_reference.py",
        &["--threads", &threads.to_string(), "--shapes", &shapes],
    )?;
    let field = |l: &str, key: &str| -> f64 {
        let pat = format!("\"{key}\": ");
        let i = l.find(&pat).unwrap_or_else(|| panic!("no {key} in {l}")) + pat.len();
        l[i..]
            .split([',', '}'])
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let head = &lines[0];
    let version = head
        .split("\"torch\": \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("?")
        .to_string();
    let rows = lines[1..]
        .iter()
        .map(|l| (field(l, "fwd"), field(l, "train")))
        .collect();
    Some(Torch {
        gemm: field(head, "gflops"),
        rows,
        version,
    })
}

fn main() {
    // As the binaries do: freed activations stay in the heap (genrep_kernels::alloc).
    genrep_kernels::tune_allocator();
    let quick = std::env::args().any(|a| a == "--quick");
    let min_s = if quick { 0.05 } else { 0.3 };
    let threads = rayon::current_num_threads();
    let n = 2048;
    let (a, b) = (randn(&[n, n]), randn(&[n, n]));
    let gemm = rate(
        || {
            std::hint::black_box(a.matmul(&b).unwrap());
        },
        2.0 * (n * n * n) as f64,
        min_s,
    );
    let torch = torch_side(threads, min_s);
    println!("threads {threads}; f32 GEMM {n}x{n}x{n}: candle {gemm:.1} GFLOP/s");
    if let Some(t) = &torch {
        println!(
            "                          PyTorch {} {:.1} GFLOP/s",
            t.version, t.gemm
        );
    } else {
        println!("(set GENREP_BENCH_PYTHON to a Python with torch for the PyTorch columns)");
    }
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>7} {:>6} | {:>8} {:>8} {:>8} {:>7}",
        "GFLOP/s",
        "ours",
        "candle",
        "torch",
        "÷torch",
        "%peak",
        "ours tr",
        "cand tr",
        "torch tr",
        "÷torch"
    );
    for (i, (label, s, train)) in SHAPES.iter().enumerate() {
        let [bsz, cin, h, w, cout, k, st, p] = *s;
        let f = flops(s);
        let x = randn(&[bsz, cin, h, w]);
        let wt = randn(&[cout, cin, k, k]);
        let ours = rate(
            || {
                std::hint::black_box(genrep_kernels::conv2d(&x, &wt, st, p).unwrap());
            },
            f,
            min_s,
        );
        let cand = rate(
            || {
                std::hint::black_box(x.conv2d(&wt, p, st, 1, 1).unwrap());
            },
            f,
            min_s,
        );
        let (tf, tt) = torch
            .as_ref()
            .map(|t| t.rows[i])
            .unwrap_or((f64::NAN, f64::NAN));
        let mut line = format!(
            "{label:<28} {ours:>8.1} {cand:>8.1} {tf:>8.1} {:>7.2} {:>5.0}% |",
            ours / tf,
            100.0 * ours / gemm
        );
        if *train {
            let xv = Var::from_tensor(&x).unwrap();
            let wv = Var::from_tensor(&wt).unwrap();
            let ours_t = rate(
                || {
                    let y = genrep_kernels::conv2d(&xv, &wv, st, p).unwrap();
                    std::hint::black_box(y.backward().unwrap());
                },
                3.0 * f,
                min_s,
            );
            let cand_t = rate(
                || {
                    let y = xv.conv2d(&wv, p, st, 1, 1).unwrap();
                    std::hint::black_box(y.backward().unwrap());
                },
                3.0 * f,
                min_s,
            );
            line += &format!(
                " {ours_t:>8.1} {cand_t:>8.1} {tt:>8.1} {:>7.2}",
                ours_t / tt
            );
        }
        println!("{line}");
    }
}

use genrep_kernels::cpu::*;
use std::time::Instant;
fn main() {
    for s in [
        [512usize, 16, 28, 28, 16, 3, 1, 1],
        [512, 32, 14, 14, 32, 3, 1, 1],
        [512, 64, 7, 7, 64, 3, 1, 1],
        [512, 1, 28, 28, 16, 3, 1, 1],
        [512, 16, 28, 28, 32, 1, 2, 0],
    ] {
        let [b, cin, h, w, cout, k, st, p] = s;
        let g = Geometry::new((b, cin, h, w), (cout, cin, k, k), st, p).unwrap();
        let x: Vec<f32> = (0..b * cin * h * w).map(|i| (i % 7) as f32).collect();
        let wt: Vec<f32> = (0..cout * cin * k * k).map(|i| (i % 5) as f32).collect();
        let y = conv2d_forward(&x, &wt, None, &g);
        let f = g.flops() / 1e9;
        let t = Instant::now();
        for _ in 0..3 {
            std::hint::black_box(conv2d_forward(&x, &wt, None, &g));
        }
        let a = t.elapsed().as_secs_f64() / 3.0;
        let t = Instant::now();
        for _ in 0..3 {
            std::hint::black_box(conv2d_backward_input(&y, &wt, &g));
        }
        let bi = t.elapsed().as_secs_f64() / 3.0;
        let t = Instant::now();
        for _ in 0..3 {
            std::hint::black_box(conv2d_backward_kernel(&x, &y, &g));
        }
        let bk = t.elapsed().as_secs_f64() / 3.0;
        println!(
            "{s:?}: fwd {:.1} ms {:.0} GF/s, dx {:.1} ms {:.0} GF/s, dw {:.1} ms {:.0} GF/s",
            a * 1e3,
            f / a,
            bi * 1e3,
            f / bi,
            bk * 1e3,
            f / bk
        );
    }
}

//! The robust trend fit behind capacity forecasts: pure functions over `(t, value)` points,
//! no I/O.
//!
//! **Estimator: binned Theil–Sen.** Exact Theil–Sen takes the median of the slopes of all
//! n(n−1)/2 point pairs: 259 560 pairs for 30 days of hourly points, ~2.6·10¹⁰ for the
//! 100 000 series of a 10 000-host fleet, far over the 2 s budget on 2 cores. So the points
//! are first grouped, in time order, into at most [`MAX_BINS`] bins of (nearly) equal
//! count; each bin is represented by the median of its times and the median of its values;
//! the slope is the median of the pairwise slopes of those ≤ 32 bin medians (≤ 496
//! pairs); the intercept is the median of `y − slope·t` over the bin medians. With n ≤ 32
//! the bins are the points themselves and the fit is exact Theil–Sen.
//!
//! **Robustness.** A bin median is unmoved by outliers as long as fewer than half of the
//! bin's points are outliers; Theil–Sen over the bin medians has a breakdown point of
//! 1 − 1/√2 ≈ 29 % of the bins. Outliers scattered through the series (spikes) therefore
//! leave the slope unmoved up to ~50 % contamination within any bin; clustered outliers
//! (a whole bad stretch) are tolerated up to ~29 % of the window. The intercept (a median
//! of the bins' offsets) tolerates 50 % of bad bins. The cost is O(n) per series plus a
//! constant 496 slopes.
//!
//! **Confidence** (0..1) = inlier share × trend clarity × coverage, where
//! - inlier share: the share of points whose residual is within 3 robust standard deviations
//!   (σ = 1.4826·MAD of the residuals, the MAD taken over at most [`MAD_SAMPLE`] evenly
//!   strided residuals) of the fit, or exactly on it;
//! - trend clarity: T / (T + 2σ) with T = |slope| × span, the trend's rise over the data
//!   (1 for a clean line, → 0 for a flat or noise-dominated series; 1 when σ = 0);
//! - coverage: min(1, span / window) — a fit over 2 days of a 30-day window counts less.
//!
//! **Not enough data** below [`MIN_POINTS`]-style minimums the caller passes in
//! ([`FitLimits`]): fewer points, or a span (first to last point) shorter than required.

/// Most bins a series is reduced to before the pairwise slopes (30 days of hourly points:
/// bins of 22–23 hours, so a daily cycle mostly averages out inside a bin).
pub const MAX_BINS: usize = 32;
/// Residuals the robust σ (MAD) is estimated from, at most (evenly strided).
pub const MAD_SAMPLE: usize = 256;

/// Default minimum of points for a fit (a day of hourly points).
pub const MIN_POINTS: usize = 24;

/// When a fit is possible at all.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FitLimits {
    /// Fewest points.
    pub min_points: usize,
    /// Shortest span from first to last point, seconds.
    pub min_span_secs: f64,
    /// The window the points were taken from, seconds (for coverage).
    pub window_secs: f64,
}

/// A robust linear fit: value(t) = intercept + slope·t, t in seconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fit {
    /// Units per second.
    pub slope: f64,
    pub intercept: f64,
    /// 0..1, see the module doc.
    pub confidence: f64,
    /// Robust standard deviation of the residuals (1.4826·MAD).
    pub sigma: f64,
    /// Points used.
    pub points: usize,
    /// Seconds from the first to the last point.
    pub span: f64,
}

impl Fit {
    /// The fitted value at `t`.
    pub fn at(&self, t: f64) -> f64 {
        self.intercept + self.slope * t
    }

    /// When the fitted line reaches `level`, if it rises towards it (None when flat or
    /// falling and still below).
    pub fn reaches(&self, level: f64) -> Option<f64> {
        if self.slope > 0.0 {
            Some((level - self.intercept) / self.slope)
        } else {
            None
        }
    }
}

/// Reusable buffers, so a pass over 100 000 series allocates once.
#[derive(Debug, Default)]
pub struct Scratch {
    bx: Vec<f64>,
    by: Vec<f64>,
    tmp: Vec<f64>,
    slopes: Vec<f64>,
    resid: Vec<f64>,
}

/// Fits `points` (time-ordered `(t secs, value)`; non-finite values are skipped by the
/// caller). `None` is "not enough data".
pub fn fit(points: &[(f64, f64)], limits: &FitLimits, s: &mut Scratch) -> Option<Fit> {
    let n = points.len();
    if n < limits.min_points.max(2) {
        return None;
    }
    let span = points[n - 1].0 - points[0].0;
    if span.is_nan() || span < limits.min_span_secs || span <= 0.0 {
        return None;
    }
    // Bin medians.
    let bins = n.min(MAX_BINS);
    s.bx.clear();
    s.by.clear();
    for b in 0..bins {
        let lo = b * n / bins;
        let hi = (b + 1) * n / bins;
        let chunk = &points[lo..hi];
        // Points are in time order: the median time is the middle of the chunk.
        let mx = (chunk[(chunk.len() - 1) / 2].0 + chunk[chunk.len() / 2].0) / 2.0;
        s.tmp.clear();
        s.tmp.extend(chunk.iter().map(|p| p.1));
        let my = median(&mut s.tmp);
        s.bx.push(mx);
        s.by.push(my);
    }
    // Pairwise slopes of the bin medians.
    s.slopes.clear();
    for i in 0..bins {
        for j in (i + 1)..bins {
            let dx = s.bx[j] - s.bx[i];
            if dx > 0.0 {
                s.slopes.push((s.by[j] - s.by[i]) / dx);
            }
        }
    }
    if s.slopes.is_empty() {
        return None;
    }
    let slope = median(&mut s.slopes);
    // Intercept: the median offset of the bin medians; t centred on the first point to keep
    // precision (epoch seconds are ~1.8e9).
    let t0 = points[0].0;
    s.tmp.clear();
    s.tmp
        .extend(s.bx.iter().zip(&s.by).map(|(x, y)| y - slope * (x - t0)));
    let offset = median(&mut s.tmp);
    s.resid.clear();
    s.resid.extend(
        points
            .iter()
            .map(|p| (p.1 - (offset + slope * (p.0 - t0))).abs()),
    );
    // The MAD from at most MAD_SAMPLE residuals, evenly strided over the series.
    let stride = n.div_ceil(MAD_SAMPLE);
    s.tmp.clear();
    s.tmp.extend(s.resid.iter().step_by(stride).copied());
    let sigma = 1.4826 * median(&mut s.tmp);
    let band = 3.0 * sigma;
    let inliers = s
        .resid
        .iter()
        .filter(|r| **r <= band || **r <= 1e-9 * (1.0 + offset.abs()))
        .count() as f64
        / n as f64;
    let rise = slope.abs() * span;
    let clarity = if sigma <= 0.0 {
        1.0
    } else {
        rise / (rise + 2.0 * sigma)
    };
    let coverage = if limits.window_secs > 0.0 {
        (span / limits.window_secs).min(1.0)
    } else {
        1.0
    };
    let confidence = (inliers * clarity * coverage).clamp(0.0, 1.0);
    Some(Fit {
        slope,
        intercept: offset - slope * t0,
        confidence,
        sigma,
        points: n,
        span,
    })
}

/// The median of `v` (reordered; mean of the two middle values for an even count). `v`
/// must not be empty; NaN-free input is the caller's duty (NaN sorts last).
fn median(v: &mut [f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    let mid = n / 2;
    let (lo, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let m = *m;
    if n % 2 == 1 {
        m
    } else {
        let below = lo.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (below + m) / 2.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const HOUR: f64 = 3600.0;
    const DAY: f64 = 86400.0;
    const T0: f64 = 1_800_000_000.0;

    /// The median the obvious way: sort a copy by `total_cmp`.
    fn sorted_median(v: &[f64]) -> f64 {
        let mut w = v.to_vec();
        w.sort_by(f64::total_cmp);
        let n = w.len();
        if n % 2 == 1 {
            w[n / 2]
        } else {
            (w[n / 2 - 1] + w[n / 2]) / 2.0
        }
    }

    proptest::proptest! {
        #[test]
        fn median_matches_a_sort(v in proptest::collection::vec(-1e12f64..1e12, 1..300)) {
            let want = sorted_median(&v);
            proptest::prop_assert_eq!(median(&mut v.clone()), want);
        }
    }

    #[test]
    fn median_of_special_values() {
        assert!(median(&mut []).is_nan());
        assert_eq!(median(&mut [-0.0, 0.0]), 0.0);
        assert_eq!(median(&mut [3.0, -1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [-5.0, -1.0, -3.0, -2.0]), -2.5);
    }

    fn limits() -> FitLimits {
        FitLimits {
            min_points: 24,
            min_span_secs: DAY,
            window_secs: 30.0 * DAY,
        }
    }

    #[test]
    fn a_clean_line_is_fitted_exactly_with_full_confidence() {
        // 30 days of hourly points growing 2 GB/day from 100 GB.
        let pts: Vec<(f64, f64)> = (0..720)
            .map(|i| {
                let t = T0 + i as f64 * HOUR;
                (t, 100e9 + 2e9 * (t - T0) / DAY)
            })
            .collect();
        let f = fit(&pts, &limits(), &mut Scratch::default()).unwrap();
        assert!((f.slope * DAY - 2e9).abs() < 1.0, "{}", f.slope * DAY);
        assert!((f.at(T0) - 100e9).abs() < 10.0);
        // 180 GB is reached 40 days after T0.
        let t = f.reaches(180e9).unwrap();
        assert!((t - (T0 + 40.0 * DAY)).abs() < 1.0);
        // Full inlier share and clarity; coverage 719 h of a 720 h window.
        assert!(
            (f.confidence - 719.0 / 720.0).abs() < 1e-9,
            "{}",
            f.confidence
        );
    }

    #[test]
    fn outliers_do_not_move_the_slope() {
        // 1 GB/day with ±0.2 GB deterministic noise and 15 % wild outliers.
        let pts: Vec<(f64, f64)> = (0..720)
            .map(|i| {
                let t = T0 + i as f64 * HOUR;
                let base = 50e9 + 1e9 * (t - T0) / DAY;
                let noise = ((i * 7919) % 401) as f64 / 400.0 * 0.4e9 - 0.2e9;
                let v = if i % 7 == 3 {
                    base * 3.0
                } else if i % 13 == 5 {
                    0.0
                } else {
                    base + noise
                };
                (t, v)
            })
            .collect();
        let f = fit(&pts, &limits(), &mut Scratch::default()).unwrap();
        let per_day = f.slope * DAY;
        assert!((per_day - 1e9).abs() < 0.05e9, "{per_day}");
        assert!(f.confidence > 0.6 && f.confidence < 1.0, "{}", f.confidence);
        // Ordinary least squares would be pulled far off by the outliers.
        let n = pts.len() as f64;
        let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
        let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
        let ols = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>()
            / pts.iter().map(|p| (p.0 - mx).powi(2)).sum::<f64>();
        assert!((ols * DAY - 1e9).abs() > 0.1e9);
    }

    #[test]
    fn flat_noise_has_low_confidence() {
        let pts: Vec<(f64, f64)> = (0..720)
            .map(|i| (T0 + i as f64 * HOUR, 40.0 + ((i * 31) % 17) as f64))
            .collect();
        let f = fit(&pts, &limits(), &mut Scratch::default()).unwrap();
        assert!(f.confidence < 0.3, "{}", f.confidence);
    }

    #[test]
    fn too_few_points_or_too_short_a_span_is_not_enough_data() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (T0 + i as f64 * HOUR, i as f64)).collect();
        assert!(fit(&pts, &limits(), &mut Scratch::default()).is_none());
        // 60 points a minute apart: enough points, one hour of span.
        let pts: Vec<(f64, f64)> = (0..60).map(|i| (T0 + i as f64 * 60.0, i as f64)).collect();
        assert!(fit(&pts, &limits(), &mut Scratch::default()).is_none());
        assert!(fit(&[], &limits(), &mut Scratch::default()).is_none());
    }

    #[test]
    fn coverage_scales_confidence() {
        let pts: Vec<(f64, f64)> = (0..72).map(|i| (T0 + i as f64 * HOUR, i as f64)).collect();
        let f = fit(&pts, &limits(), &mut Scratch::default()).unwrap();
        // 71 h of a 30-day window.
        assert!(
            (f.confidence - 71.0 / 720.0).abs() < 1e-6,
            "{}",
            f.confidence
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_confidence_is_bounded(
            ys in proptest::collection::vec(-1e12f64..1e12, 0..200),
            step in 1.0f64..10_000.0,
        ) {
            let pts: Vec<(f64, f64)> = ys.iter().enumerate().map(|(i, y)| (T0 + i as f64 * step, *y)).collect();
            let lim = FitLimits { min_points: 2, min_span_secs: 0.0, window_secs: DAY };
            if let Some(f) = fit(&pts, &lim, &mut Scratch::default()) {
                proptest::prop_assert!((0.0..=1.0).contains(&f.confidence));
                proptest::prop_assert!(f.slope.is_finite());
            }
        }
    }
}

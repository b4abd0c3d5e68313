//! `smart_resize`: the frame size rule of qwen-vl-utils, with Python's f64 operation order.

use super::Preset;

/// Python `round(x / f) * f` (ties to even).
fn round_by_factor(x: f64, f: f64) -> f64 {
    (x / f).round_ties_even() * f
}

fn floor_by_factor(x: f64, f: f64) -> f64 {
    (x / f).floor() * f
}

fn ceil_by_factor(x: f64, f: f64) -> f64 {
    (x / f).ceil() * f
}

/// Target (height, width) for an item of `height`×`width` pixels: both multiples of
/// `preset.image_factor`, area within [min_pixels, max_pixels] (not re-checked after the
/// scaling, as in the reference, so it can land slightly outside).
///
/// Errors (as a message; callers attach the file): a zero side, an aspect ratio above
/// `preset.max_ratio`, and, where the preset says so, `max_pixels < min_pixels`.
pub fn smart_resize(
    height: u32,
    width: u32,
    min_pixels: f64,
    max_pixels: f64,
    preset: &Preset,
) -> Result<(u32, u32), String> {
    if preset.require_min_le_max && max_pixels < min_pixels {
        return Err(format!(
            "max_pixels {max_pixels} is below min_pixels {min_pixels}"
        ));
    }
    if height == 0 || width == 0 {
        return Err(format!("image has a zero side ({height}x{width})"));
    }
    let (h, w) = (height as f64, width as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > preset.max_ratio {
        return Err(format!(
            "absolute aspect ratio must be smaller than {}, got {ratio} ({height}x{width})",
            preset.max_ratio
        ));
    }
    let f = preset.image_factor as f64;
    let mut hb = f.max(round_by_factor(h, f));
    let mut wb = f.max(round_by_factor(w, f));
    if hb * wb > max_pixels {
        // (h*w) is an exact integer product in Python; h*w < 2^53 here for any real image.
        let beta = ((h * w) / max_pixels).sqrt();
        hb = floor_by_factor(h / beta, f);
        wb = floor_by_factor(w / beta, f);
        if preset.floor_at_factor {
            hb = hb.max(f);
            wb = wb.max(f);
        }
    } else if hb * wb < min_pixels {
        let beta = (min_pixels / (h * w)).sqrt();
        hb = ceil_by_factor(h * beta, f);
        wb = ceil_by_factor(w * beta, f);
    }
    if !(hb >= 1.0 && wb >= 1.0 && hb < u32::MAX as f64 && wb < u32::MAX as f64) {
        return Err(format!(
            "{height}x{width} resizes to an unusable size {hb}x{wb} (min_pixels {min_pixels}, max_pixels {max_pixels})"
        ));
    }
    Ok((hb as u32, wb as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        let vr1 = Preset::video_r1();
        // Ties go to even: 70/28 = 2.5 -> 2.
        assert_eq!(smart_resize(70, 70, 3136.0, 12845056.0, &vr1), Ok((56, 56)));
        // Video-R1 committed constants give an effective 105369 max for 360x640.
        assert_eq!(
            smart_resize(360, 640, 100352.0, 105369.0, &vr1),
            Ok((224, 420))
        );
        assert_eq!(
            smart_resize(360, 640, 100352.0, 200704.0, &vr1),
            Ok((336, 588))
        );
        assert!(smart_resize(1, 201, 3136.0, 12845056.0, &vr1).is_err());
        assert!(smart_resize(0, 20, 3136.0, 12845056.0, &vr1).is_err());
    }
}

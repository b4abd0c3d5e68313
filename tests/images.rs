//! Image decoding against Pillow: every file in tests/fixtures/images/inputs must decode to
//! the exact RGB bytes that qwen-vl-utils' `to_rgb(Image.open(f))` gives under Pillow 13.0.0
//! (tests/fixtures/gen_images.py), and files Pillow refuses must be refused with an error
//! naming the file.

mod common;

use std::path::PathBuf;
use std::process::Command;

use reel::media::image::{decode_rgb_with, read_rgb, ImageLimits};
use reel::media::jpeg::{self, JpegDecoder};
use serde_json::Value;

fn dir() -> PathBuf {
    common::fixtures().join("images")
}

fn index() -> Value {
    let p = dir().join("index.json");
    let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&b).unwrap()
}

fn cases() -> Vec<(String, Value)> {
    let idx = index();
    let cases = idx["cases"].as_object().unwrap();
    cases.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The golden RGB bytes of a case: its PNG decoded, checked against the sha256 Pillow wrote.
fn golden(case: &Value) -> (usize, usize, Vec<u8>) {
    let p = dir().join(case["golden"].as_str().unwrap());
    let img = ::image::open(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .into_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    assert_eq!(w as u64, case["width"].as_u64().unwrap());
    assert_eq!(h as u64, case["height"].as_u64().unwrap());
    let raw = img.into_raw();
    assert_eq!(
        hex(&sha256(&raw)),
        case["sha256"].as_str().unwrap(),
        "{}: golden PNG does not hold the bytes Pillow hashed",
        p.display()
    );
    (w, h, raw)
}

fn input(case: &Value) -> PathBuf {
    dir().join(case["input"].as_str().unwrap())
}

/// (values that differ, largest difference).
fn diff(a: &[u8], b: &[u8]) -> (usize, u8) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .filter(|(x, y)| x != y)
        .fold((0, 0), |(n, m), (x, y)| (n + 1, m.max(x.abs_diff(*y))))
}

#[test]
fn every_golden_decodes_to_pillows_bytes() {
    // The exact JPEG path needs the library; setup.sh installs it (Debian libturbojpeg0).
    let lib = jpeg::turbo_library()
        .unwrap_or_else(|e| panic!("libturbojpeg cannot be loaded ({e}): run scripts/setup.sh"));
    let mut bad = Vec::new();
    let mut n = 0;
    for (name, case) in cases() {
        if case.get("error").is_some() {
            continue;
        }
        let (w, h, want) = golden(&case);
        let bytes = std::fs::read(input(&case)).unwrap();
        match decode_rgb_with(&bytes, &ImageLimits::default(), JpegDecoder::Turbo) {
            Ok(f) if (f.w, f.h) != (w, h) => {
                bad.push(format!("{name}: {}x{}, Pillow {w}x{h}", f.w, f.h))
            }
            Ok(f) if f.data != want => {
                let (k, m) = diff(&f.data, &want);
                bad.push(format!(
                    "{name}: {k} of {} values differ, by up to {m}",
                    want.len()
                ));
            }
            Ok(_) => {}
            Err(e) => bad.push(format!("{name}: {e}")),
        }
        n += 1;
    }
    assert!(n >= 50, "only {n} golden cases");
    assert!(bad.is_empty(), "not Pillow's bytes:\n{}", bad.join("\n"));
    println!("{n} images decode to Pillow's bytes (JPEG via {lib})");
}

#[test]
fn files_pillow_refuses_are_refused_naming_the_file() {
    let mut n = 0;
    for (name, case) in cases() {
        let Some(pil) = case.get("error") else {
            continue;
        };
        let path = input(&case);
        let e = read_rgb(&path, &ImageLimits::default())
            .map(|f| panic!("{name}: decoded to {}x{}; Pillow says {pil}", f.w, f.h))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&path.display().to_string()), "{name}: {e}");
        let want = match name.as_str() {
            "bad_jpeg_truncated" => "truncated",
            "bad_jpeg_12bit" => "12-bit",
            "bad_jpeg_header_only" => "truncated",
            o => panic!("new refused case {o}: say what its error must mention"),
        };
        assert!(e.contains(want), "{name}: {e}");
        n += 1;
    }
    assert_eq!(n, 3);
}

#[test]
fn exif_orientation_is_not_applied() {
    // The file says "rotate 90° clockwise to display"; qwen-vl-utils never does, so the
    // model sees the stored 203×157 grid, the same pixels as the file without the tag.
    let d = dir().join("inputs");
    let bytes = std::fs::read(d.join("jpeg_exif_orientation6.jpg")).unwrap();
    let at = bytes
        .windows(6)
        .position(|w| w == b"Exif\0\0")
        .expect("EXIF");
    let tiff = &bytes[at + 6..];
    assert_eq!(&tiff[..2], b"MM", "generator writes big-endian EXIF");
    let entry = tiff.windows(2).position(|w| w == [0x01, 0x12]).unwrap();
    assert_eq!(&tiff[entry + 8..entry + 10], &[0, 6], "orientation 6");
    let rotated = read_rgb(&d.join("jpeg_exif_orientation6.jpg"), &Default::default()).unwrap();
    let plain = read_rgb(&d.join("jpeg_420.jpg"), &Default::default()).unwrap();
    assert_eq!((rotated.w, rotated.h), (203, 157));
    assert_eq!(rotated.data, plain.data);
}

#[test]
fn jpeg_fallback_decodes_close_to_pillow() {
    for (name, case) in cases() {
        if !name.starts_with("jpeg_") {
            continue;
        }
        let (w, h, want) = golden(&case);
        let bytes = std::fs::read(input(&case)).unwrap();
        let r = decode_rgb_with(&bytes, &ImageLimits::default(), JpegDecoder::Image);
        // zune-jpeg has no arithmetic decoding; the error must say so, not panic.
        if name == "jpeg_arithmetic" {
            let e = r.unwrap_err();
            assert!(e.contains("DAC"), "{e}");
            continue;
        }
        let f = r.unwrap_or_else(|e| panic!("{name}: fallback fails: {e}"));
        assert_eq!((f.w, f.h), (w, h), "{name}");
        let (k, m) = diff(&f.data, &want);
        let mean = f
            .data
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b) as f64)
            .sum::<f64>()
            / want.len() as f64;
        println!(
            "{name}: fallback differs in {k} of {} values, max {m}, mean {mean:.3}",
            want.len()
        );
        assert!(
            mean < 2.0,
            "{name}: fallback is far from Pillow: mean {mean}"
        );
    }
}

/// Runs this test binary again with `REEL_JPEG` set, for [`env_child`].
fn run_child(value: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "env_child", "--ignored", "--nocapture"])
        .env("REEL_JPEG", value)
        .output()
        .unwrap()
}

#[test]
fn reel_jpeg_env_selects_the_decoder() {
    for (value, want) in [
        ("image", "fallback differs"),
        ("turbo", "exact"),
        ("zune", "not one of auto, turbo, image"),
    ] {
        let out = run_child(value);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "REEL_JPEG={value}:\n{text}");
        assert!(
            text.contains(want),
            "REEL_JPEG={value}: no {want:?} in\n{text}"
        );
    }
}

/// Child of [`reel_jpeg_env_selects_the_decoder`] (ignored in a normal run): decodes through
/// the environment's choice and says what it got.
#[test]
#[ignore]
fn env_child() {
    let case = &index()["cases"]["jpeg_420"];
    let (_, _, want) = golden(case);
    match read_rgb(&input(case), &Default::default()) {
        Ok(f) if f.data == want => println!("exact"),
        Ok(f) => println!("fallback differs in {} values", diff(&f.data, &want).0),
        Err(e) => println!("error: {e}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SHA-256 (FIPS 180-4), to check goldens against the hashes Pillow's side wrote.
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend((data.len() as u64 * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    let mut out = [0u8; 32];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

#[test]
fn sha256_known_answers() {
    assert_eq!(
        hex(&sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        hex(&sha256(&[b'a'; 1000])),
        "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
    );
}

#[test]
fn jpeg_reaches_the_model_as_pillows_pixels() {
    // fetch_image on the JPEG and on Pillow's decoded pixels (as a PNG) give the same resized
    // frame, so the vision tower sees identical input and produces identical logits.
    let p = reel::media::Preset::video_r1();
    let req = reel::media::ImageRequest::default();
    for name in ["jpeg_grace_hopper_orig", "jpeg_420", "jpeg_ycck"] {
        let case = &index()["cases"][name];
        let from_jpeg = reel::media::load_image(&input(case), &p, &req).unwrap();
        let gold = dir().join(case["golden"].as_str().unwrap());
        let from_png = reel::media::load_image(&gold, &p, &req).unwrap();
        assert_eq!(from_jpeg.original, from_png.original, "{name}");
        assert_eq!(from_jpeg.frames, from_png.frames, "{name}");
    }
}

#[test]
fn jpeg_size_limits_apply_before_decoding() {
    let bytes = std::fs::read(dir().join("inputs/jpeg_420_progressive.jpg")).unwrap();
    let small = ImageLimits {
        max_pixels: 203 * 157 - 1,
        ..Default::default()
    };
    let e = decode_rgb_with(&bytes, &small, JpegDecoder::Turbo).unwrap_err();
    assert!(
        e.contains("203x157") && e.contains("decompression bomb"),
        "{e}"
    );
    let tight = ImageLimits {
        max_alloc: 203 * 157 * 3 * 2,
        ..Default::default()
    };
    let e = decode_rgb_with(&bytes, &tight, JpegDecoder::Turbo).unwrap_err();
    assert!(e.contains("over the limit"), "{e}");
    let ok = ImageLimits {
        max_alloc: 203 * 157 * 3 * 3,
        ..Default::default()
    };
    assert!(decode_rgb_with(&bytes, &ok, JpegDecoder::Turbo).is_ok());
}

#[test]
fn unsupported_formats_are_named() {
    let d = tempfile::tempdir().unwrap();
    for (name, bytes, want) in [
        (
            "a.tif",
            &b"II*\0\x08\0\0\0"[..],
            "TIFF images are not supported",
        ),
        ("a.avif", &b"\0\0\0\x1cftypavif\0\0\0\0"[..], "HEIF/AVIF"),
        (
            "a.txt",
            &b"hello world, not an image"[..],
            "not a recognized image format",
        ),
        ("a.gif", &b"GIF89a\x01\0"[..], "cannot decode GIF"),
    ] {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = read_rgb(&p, &Default::default()).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains(name), "{name}: {e}");
    }
}

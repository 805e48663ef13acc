//! Images to input tensors: decode (EXIF orientation applied; grayscale, alpha and
//! 16-bit images become 8-bit RGB), then torchvision's eval transform: resize the shorter
//! side, center-crop, scale to [0, 1] and normalise.

use crate::models::Preprocess;
use crate::tensor::Tensor;
use image::{imageops::FilterType, DynamicImage, ImageDecoder, ImageReader};
use std::io::Cursor;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode image: {0}")]
pub struct DecodeError(pub String);

/// Decoded images larger than this (pixels) are refused before their pixels are
/// allocated: 64 megapixels, more than any camera photo a CNN is fed.
pub const MAX_DECODED_PIXELS: u64 = 64 << 20;

/// The decoder's own allocation budget: 64 megapixels at 16-bit RGBA, plus room.
const MAX_DECODE_ALLOC: u64 = MAX_DECODED_PIXELS * 8 + (64 << 20);

/// Decode JPEG / PNG / WebP / GIF / BMP bytes, honouring EXIF orientation. Images past
/// `MAX_DECODED_PIXELS` are an error, found from the header before decoding.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, DecodeError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    if reader.format().is_none() {
        return Err(DecodeError(
            "not a JPEG, PNG, WebP, GIF or BMP image".into(),
        ));
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| DecodeError(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(DecodeError(format!("the image is empty ({w}x{h} pixels)")));
    }
    if w as u64 * h as u64 > MAX_DECODED_PIXELS {
        return Err(DecodeError(format!(
            "{w}x{h} pixels is more than the {} megapixels webcnn decodes",
            MAX_DECODED_PIXELS >> 20
        )));
    }
    let orientation = decoder
        .orientation()
        .map_err(|e| DecodeError(e.to_string()))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| DecodeError(e.to_string()))?;
    img.apply_orientation(orientation);
    if img.width() == 0 || img.height() == 0 {
        return Err(DecodeError(format!(
            "the image is empty ({}x{} pixels)",
            img.width(),
            img.height()
        )));
    }
    Ok(img)
}

/// Raw 8-bit pixels (`channels` 3 = RGB, 4 = RGBA, row-major) as an image; alpha is
/// dropped later, as for decoded images.
pub fn from_pixels(
    data: Vec<u8>,
    width: u32,
    height: u32,
    channels: u32,
) -> Result<DynamicImage, DecodeError> {
    let want = width as u64 * height as u64 * channels as u64;
    if width == 0 || height == 0 || data.len() as u64 != want {
        return Err(DecodeError(format!(
            "{width}x{height}x{channels} pixels need {want} bytes, got {}",
            data.len()
        )));
    }
    if width as u64 * height as u64 > MAX_DECODED_PIXELS {
        return Err(DecodeError(format!(
            "{width}x{height} pixels is more than the {} megapixels webcnn takes",
            MAX_DECODED_PIXELS >> 20
        )));
    }
    let img = match channels {
        3 => image::RgbImage::from_raw(width, height, data).map(DynamicImage::ImageRgb8),
        4 => image::RgbaImage::from_raw(width, height, data).map(DynamicImage::ImageRgba8),
        _ => {
            return Err(DecodeError(format!(
                "pixels must have 3 or 4 channels, not {channels}"
            )))
        }
    };
    img.ok_or_else(|| DecodeError("pixel buffer does not match its size".into()))
}

/// Python's `round` (half to even), as torchvision's center crop uses it.
fn round_half_even(v: f64) -> i64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && r as i64 % 2 != 0 {
        (r - v.signum()) as i64
    } else {
        r as i64
    }
}

/// Resized images larger than this (pixels) are not made whole: only extreme aspect
/// ratios (a 1 x 20000 strip would become 256 x 5,120,000) get there.
const MAX_RESIZED_PIXELS: u64 = 16 << 20;

/// `Resize(resize)` (bilinear, antialiased) + `CenterCrop(crop)` + `ToTensor` + `Normalize`:
/// a `[3, crop, crop]` tensor, as one image of a batch. Working memory follows the output:
/// past `MAX_RESIZED_PIXELS` only the part of the source the crop sees is resized.
pub fn to_chw(img: &DynamicImage, p: &Preprocess) -> Vec<f32> {
    let mut rgb = img.to_rgb8();
    // An empty image (which `decode` refuses, but a caller can build one) is one black
    // pixel: no size to scale from.
    if rgb.width() == 0 || rgb.height() == 0 {
        rgb = image::RgbImage::new(1, 1);
    }
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    // Shorter side to `resize`, the longer one scaled and truncated, as torchvision does.
    let (nw, nh) = if w <= h {
        (p.resize, (p.resize as f64 * h as f64 / w as f64) as usize)
    } else {
        ((p.resize as f64 * w as f64 / h as f64) as usize, p.resize)
    };
    let (nw, nh) = (nw.max(1), nh.max(1));
    let top = round_half_even((nh as f64 - p.crop as f64) / 2.0);
    let left = round_half_even((nw as f64 - p.crop as f64) / 2.0);
    // The resized pixels the crop reads: rows top..top+crop, columns left..left+crop.
    let (resized, (top, left)) = if nw as u64 * nh as u64 <= MAX_RESIZED_PIXELS {
        let r = image::imageops::resize(&rgb, nw as u32, nh as u32, FilterType::Triangle);
        (r, (top, left))
    } else {
        // Resize only the source window under the crop, one filter reach wider.
        let window = |start: i64, n_out: usize, n_in: usize| {
            let scale = n_in as f64 / n_out as f64;
            let a = (start.max(0) as f64 * scale - scale.ceil() - 1.0)
                .floor()
                .max(0.0);
            let b = ((start + p.crop as i64).min(n_out as i64) as f64 * scale + scale.ceil() + 1.0)
                .ceil()
                .min(n_in as f64);
            // Whole resized pixels: a window of `k` output pixels starting at output `o`.
            let o = (a / scale).floor() as usize;
            let k = (((b / scale).ceil() as usize).min(n_out) - o).max(1);
            let src0 = ((o as f64 * scale) as usize).min(n_in - 1);
            let src1 = (((o + k) as f64 * scale).ceil() as usize).clamp(src0 + 1, n_in);
            (o, k, src0, src1 - src0)
        };
        let (oy, ky, sy, hy) = window(top, nh, h);
        let (ox, kx, sx, wx) = window(left, nw, w);
        let part =
            image::imageops::crop_imm(&rgb, sx as u32, sy as u32, wx as u32, hy as u32).to_image();
        let r = image::imageops::resize(&part, kx as u32, ky as u32, FilterType::Triangle);
        (r, (top - oy as i64, left - ox as i64))
    };
    let (rw, rh) = (resized.width() as i64, resized.height() as i64);
    let mut out = vec![0f32; 3 * p.crop * p.crop];
    for y in 0..p.crop {
        for x in 0..p.crop {
            let (sy, sx) = (y as i64 + top, x as i64 + left);
            // A crop larger than the image pads with zeros (torchvision pads too).
            let px = if sy >= 0 && sx >= 0 && sy < rh && sx < rw {
                resized.get_pixel(sx as u32, sy as u32).0
            } else {
                [0, 0, 0]
            };
            for c in 0..3 {
                out[(c * p.crop + y) * p.crop + x] = (px[c] as f32 / 255.0 - p.mean[c]) / p.std[c];
            }
        }
    }
    out
}

/// Decode and preprocess several images into one `[N, 3, crop, crop]` batch.
pub fn batch(images: &[DynamicImage], p: &Preprocess) -> Tensor {
    let data: Vec<f32> = images.iter().flat_map(|i| to_chw(i, p)).collect();
    Tensor::new([images.len(), 3, p.crop, p.crop], data).expect("sizes match")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_pythons() {
        assert_eq!(
            [0.5, 1.5, 2.5, -0.5, 2.4, 2.6].map(round_half_even),
            [0, 2, 2, 0, 2, 3]
        );
    }

    #[test]
    fn empty_images_are_refused_or_black() {
        // A GIF whose screen is 1801 x 0 pixels (found by the fuzzer: the resize
        // arithmetic overflowed on it).
        let gif = include_bytes!(
            "../tests/fixtures/fuzz/image/crash-ced2c7219c5f653e58466bba0f32a6a9140d3179"
        );
        let e = decode(gif).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let p = Preprocess {
            resize: 8,
            crop: 4,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let x = to_chw(&DynamicImage::new_rgb8(0, 3), &p);
        assert_eq!(x, vec![-1.0; 3 * 4 * 4]);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(decode(b"definitely not an image").is_err());
        let mut png = vec![];
        DynamicImage::new_rgb8(4, 4)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert!(decode(&png[..png.len() / 2]).is_err());
        assert_eq!(decode(&png).unwrap().width(), 4);
    }

    #[test]
    fn exif_orientation_is_applied() {
        use image::ImageEncoder;
        // TIFF (big-endian) with one IFD entry: Orientation (0x0112) = 6, rotate 90 CW.
        let exif = [
            b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0,
            0,
        ];
        let img = image::RgbImage::from_pixel(40, 20, image::Rgb([200, 10, 10]));
        let mut jpg = vec![];
        let mut enc = image::codecs::jpeg::JpegEncoder::new(&mut jpg);
        enc.set_exif_metadata(exif.to_vec()).unwrap();
        enc.write_image(img.as_raw(), 40, 20, image::ExtendedColorType::Rgb8)
            .unwrap();
        let d = decode(&jpg).unwrap();
        assert_eq!((d.width(), d.height()), (20, 40));
    }

    #[test]
    fn images_past_the_pixel_budget_are_refused_from_their_header() {
        // A real 8x8 PNG whose header is rewritten to 20000 x 20000 (400 megapixels).
        let mut png = vec![];
        DynamicImage::new_rgb8(8, 8)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png[16..20].copy_from_slice(&20000u32.to_be_bytes());
        png[20..24].copy_from_slice(&20000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = decode(&png).unwrap_err().0;
        assert!(
            e.contains("20000x20000 pixels is more than the 64 megapixels"),
            "{e}"
        );
        let raw = from_pixels(vec![0; 3], 1, 1, 3);
        assert!(raw.is_ok());
        let big = from_pixels(vec![0; 3 * 9000 * 8000], 9000, 8000, 3).unwrap_err();
        assert!(big.0.contains("megapixels"), "{big}");
    }

    /// PNG's CRC-32 (IEEE), bitwise.
    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn extreme_aspect_ratios_resize_only_what_the_crop_sees() {
        let p = Preprocess {
            resize: 256,
            crop: 224,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        // 1 x 20000: resizing it whole would make 256 x 5,120,000 pixels (3.9 GB).
        let strip = image::RgbImage::from_fn(1, 20000, |_, y| {
            image::Rgb([(y / 100) as u8, 128, 255 - (y / 100) as u8])
        });
        let t = to_chw(&DynamicImage::ImageRgb8(strip), &p);
        assert_eq!(t.len(), 3 * 224 * 224);
        // The centre of the strip (rows around 10000) is what the crop shows.
        let mid = t[112 * 224 + 112];
        assert!((mid - 100.0 / 255.0).abs() < 0.02, "{mid}");
        assert!(t.iter().all(|v| v.is_finite()));
        // Wide too, and a normal photo-like image keeps the exact path.
        let wide = image::RgbImage::from_fn(30000, 2, |x, _| image::Rgb([(x / 150) as u8, 0, 0]));
        let t = to_chw(&DynamicImage::ImageRgb8(wide), &p);
        assert!((t[112 * 224 + 112] - 100.0 / 255.0).abs() < 0.02);
    }

    #[test]
    fn resize_and_crop_follow_torchvision() {
        let p = Preprocess {
            resize: 8,
            crop: 6,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        // A 16x32 image becomes 8x16, then the central 6x6: all white maps to 1.0.
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            32,
            16,
            image::Rgb([255, 255, 255]),
        ));
        let t = batch(&[img.clone(), img], &p);
        assert_eq!(t.shape(), [2, 3, 6, 6]);
        assert!(t.data().iter().all(|&v| (v - 1.0).abs() < 1e-6));
    }
}

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

/// Decode JPEG / PNG / WebP / GIF / BMP bytes, honouring EXIF orientation.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, DecodeError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError(e.to_string()))?;
    if reader.format().is_none() {
        return Err(DecodeError(
            "not a JPEG, PNG, WebP, GIF or BMP image".into(),
        ));
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| DecodeError(e.to_string()))?;
    let orientation = decoder
        .orientation()
        .map_err(|e| DecodeError(e.to_string()))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| DecodeError(e.to_string()))?;
    img.apply_orientation(orientation);
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

/// `Resize(resize)` (bilinear, antialiased) + `CenterCrop(crop)` + `ToTensor` + `Normalize`:
/// a `[3, crop, crop]` tensor, as one image of a batch.
pub fn to_chw(img: &DynamicImage, p: &Preprocess) -> Vec<f32> {
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    // Shorter side to `resize`, the longer one scaled and truncated, as torchvision does.
    let (nw, nh) = if w <= h {
        (p.resize, (p.resize as f64 * h as f64 / w as f64) as usize)
    } else {
        ((p.resize as f64 * w as f64 / h as f64) as usize, p.resize)
    };
    let resized = image::imageops::resize(
        &rgb,
        nw.max(1) as u32,
        nh.max(1) as u32,
        FilterType::Triangle,
    );
    let top = round_half_even((nh as f64 - p.crop as f64) / 2.0);
    let left = round_half_even((nw as f64 - p.crop as f64) / 2.0);
    let mut out = vec![0f32; 3 * p.crop * p.crop];
    for y in 0..p.crop {
        for x in 0..p.crop {
            let (sy, sx) = (y as i64 + top, x as i64 + left);
            // A crop larger than the image pads with zeros (torchvision pads too).
            let px = if sy >= 0 && sx >= 0 && (sy as usize) < nh && (sx as usize) < nw {
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

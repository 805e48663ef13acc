//! Images to input tensors: decode (EXIF orientation applied; grayscale, alpha and
//! 16-bit images become 8-bit RGB), then torchvision's eval transform: resize the shorter
//! side, center-crop, scale to [0, 1] and normalise.

use crate::tensor::Tensor;
use image::{DynamicImage, ImageDecoder, ImageReader};
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

/// How pixels are interpolated when the image is scaled: PIL's filters, antialiased when
/// shrinking (the path torchvision and timm take on PIL images).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(all(target_arch = "wasm32", feature = "gpu"), derive(tsify::Tsify))]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    Bilinear,
    Bicubic,
    Nearest,
}

impl std::str::FromStr for Interpolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bilinear" => Ok(Interpolation::Bilinear),
            "bicubic" => Ok(Interpolation::Bicubic),
            "nearest" => Ok(Interpolation::Nearest),
            _ => Err(format!(
                "unknown interpolation '{s}' (bilinear, bicubic or nearest)"
            )),
        }
    }
}

impl Interpolation {
    pub fn name(self) -> &'static str {
        match self {
            Interpolation::Bilinear => "bilinear",
            Interpolation::Bicubic => "bicubic",
            Interpolation::Nearest => "nearest",
        }
    }
}

/// How the scaled image becomes the input's size (timm's `crop_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(all(target_arch = "wasm32", feature = "gpu"), derive(tsify::Tsify))]
#[serde(rename_all = "lowercase")]
pub enum CropMode {
    /// Shorter side to `size / crop_pct`, then the central `size` (torchvision's
    /// `Resize` + `CenterCrop`).
    Center,
    /// Both sides to `size / crop_pct` (the aspect ratio not kept), then the center.
    Squash,
    /// Longer side to `size / crop_pct`, then padded with the mean colour to `size`.
    Border,
}

impl std::str::FromStr for CropMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "center" => Ok(CropMode::Center),
            "squash" => Ok(CropMode::Squash),
            "border" => Ok(CropMode::Border),
            _ => Err(format!(
                "unknown crop mode '{s}' (center, squash or border)"
            )),
        }
    }
}

impl CropMode {
    pub fn name(self) -> &'static str {
        match self {
            CropMode::Center => "center",
            CropMode::Squash => "squash",
            CropMode::Border => "border",
        }
    }
}

/// How images are prepared for a model: timm's eval transform (`resolve_data_config` +
/// `create_transform`), of which torchvision's `Resize(256)` + `CenterCrop(224)` is the
/// case `size` 224, `crop_pct` 0.875, bilinear, center.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[cfg_attr(all(target_arch = "wasm32", feature = "gpu"), derive(tsify::Tsify))]
#[serde(rename_all = "camelCase")]
pub struct Preprocess {
    /// The input tensor's height and width.
    pub size: [usize; 2],
    /// The image is scaled to `floor(size / crop_pct)` before the crop (1: no margin).
    pub crop_pct: f64,
    pub interpolation: Interpolation,
    pub crop_mode: CropMode,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// Torchvision's `Resize(resize)` + `CenterCrop(crop)`, bilinear.
    pub fn resize_crop(resize: usize, crop: usize, mean: [f32; 3], std: [f32; 3]) -> Preprocess {
        Preprocess {
            size: [crop, crop],
            crop_pct: crop as f64 / resize as f64,
            interpolation: Interpolation::Bilinear,
            crop_mode: CropMode::Center,
            mean,
            std,
        }
    }

    /// The size the image is scaled to before the crop: `floor(size / crop_pct)` per side.
    pub fn scale_size(&self) -> [usize; 2] {
        self.size
            .map(|x| ((x as f64 / self.crop_pct).floor() as usize).max(1))
    }

    /// Every field in range: sizes from 1 to 4096, `crop_pct` in (0, 1] past 1/16,
    /// finite means, positive finite stds.
    pub fn validate(&self) -> Result<(), String> {
        if self.size.iter().any(|&s| !(1..=4096).contains(&s)) {
            return Err(format!(
                "input size {}x{} is outside 1..=4096",
                self.size[0], self.size[1]
            ));
        }
        if !(self.crop_pct > 1.0 / 16.0 && self.crop_pct <= 1.0) {
            return Err(format!("crop_pct {} is outside (0.0625, 1]", self.crop_pct));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err("the mean must be finite".into());
        }
        if self.std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err("the std must be positive and finite".into());
        }
        Ok(())
    }
}

impl Preprocess {
    /// These settings overridden by the ones a timm `pretrained_cfg` names (`input_size`
    /// as `[3, h, w]`, `[h, w]` or one number; `crop_pct`, `interpolation`, `crop_mode`,
    /// `mean`, `std`); other keys are ignored. The result is validated.
    pub fn with_timm_cfg(mut self, cfg: &serde_json::Value) -> Result<Preprocess, String> {
        let num = |v: &serde_json::Value, what: &str| {
            v.as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("{what} must be a number"))
        };
        let int = |v: &serde_json::Value| {
            v.as_u64()
                .filter(|&x| x > 0 && x <= 4096)
                .map(|x| x as usize)
                .ok_or_else(|| format!("input_size {v} is not a size from 1 to 4096"))
        };
        if let Some(v) = cfg.get("input_size").filter(|v| !v.is_null()) {
            self.size = match v.as_array().map(|a| a.as_slice()) {
                Some([c, h, w]) => {
                    if c.as_u64() != Some(3) {
                        return Err(format!(
                            "input_size {v}: only 3 channels (RGB) are supported"
                        ));
                    }
                    [int(h)?, int(w)?]
                }
                Some([h, w]) => [int(h)?, int(w)?],
                Some(_) => return Err(format!("input_size {v} is not [3, h, w] or [h, w]")),
                None => {
                    let n = int(v)?;
                    [n, n]
                }
            };
        }
        if let Some(v) = cfg.get("crop_pct").filter(|v| !v.is_null()) {
            self.crop_pct = num(v, "crop_pct")?;
        }
        if let Some(v) = cfg.get("interpolation").filter(|v| !v.is_null()) {
            self.interpolation = v
                .as_str()
                .ok_or("interpolation must be a string")?
                .parse()?;
        }
        if let Some(v) = cfg.get("crop_mode").filter(|v| !v.is_null()) {
            self.crop_mode = v.as_str().ok_or("crop_mode must be a string")?.parse()?;
        }
        for (key, dst) in [("mean", &mut self.mean), ("std", &mut self.std)] {
            if let Some(v) = cfg.get(key).filter(|v| !v.is_null()) {
                match v.as_array().map(|a| a.as_slice()) {
                    Some([a, b, c]) => {
                        *dst = [
                            num(a, key)? as f32,
                            num(b, key)? as f32,
                            num(c, key)? as f32,
                        ]
                    }
                    _ => return Err(format!("{key} must be three numbers (R, G, B)")),
                }
            }
        }
        self.validate()?;
        Ok(self)
    }

    /// The settings in timm's `pretrained_cfg` names (what [`Preprocess::with_timm_cfg`] reads).
    pub fn to_timm_cfg(&self) -> serde_json::Value {
        serde_json::json!({
            "input_size": [3, self.size[0], self.size[1]],
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation.name(),
            "crop_mode": self.crop_mode.name(),
            "mean": self.mean,
            "std": self.std,
        })
    }
}

/// PIL's fixed point for 8-bit resampling (`PRECISION_BITS` in its Resample.c).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The resampling weights of output pixels `range` of an `n_in` -> `n_out` resize along one
/// axis, as PIL computes them (`precompute_coeffs` + `normalize_coeffs_8bpc`): for each
/// output pixel its first source pixel and fixed-point weights.
fn coeffs(
    n_in: usize,
    n_out: usize,
    f: Interpolation,
    range: std::ops::Range<usize>,
) -> Vec<(usize, Vec<i32>)> {
    let (support, filter): (f64, fn(f64) -> f64) = match f {
        Interpolation::Bilinear => (1.0, |x: f64| {
            let x = x.abs();
            if x < 1.0 {
                1.0 - x
            } else {
                0.0
            }
        }),
        // Keys' cubic with a = -0.5.
        Interpolation::Bicubic => (2.0, |x: f64| {
            let a = -0.5;
            let x = x.abs();
            if x < 1.0 {
                ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * a
            } else {
                0.0
            }
        }),
        Interpolation::Nearest => unreachable!("nearest takes no weights"),
    };
    let scale = n_in as f64 / n_out as f64;
    let filterscale = scale.max(1.0);
    let support = support * filterscale;
    range
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's truncating casts, as PIL rounds.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(n_in as i64) as usize;
            let w: Vec<f64> = (xmin..xmax.max(xmin))
                .map(|x| filter((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = w.iter().sum();
            let k = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    let fx = v * (1u32 << PRECISION_BITS) as f64;
                    if fx < 0.0 {
                        (fx - 0.5) as i32
                    } else {
                        (fx + 0.5) as i32
                    }
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

/// PIL's `clip8`: a fixed-point sum back to a byte.
fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// One output pixel of a resampling pass: the fixed-point weights `ws` times the pixels
/// `pixel(j)` they weigh, rounded as PIL rounds.
fn taps(ws: &[i32], pixel: impl Fn(usize) -> [u8; 3]) -> [u8; 3] {
    let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
    for (j, &wt) in ws.iter().enumerate() {
        let p = pixel(j);
        for c in 0..3 {
            acc[c] += p[c] as i64 * wt as i64;
        }
    }
    acc.map(clip8)
}

/// Rows `rows` x columns `cols` of `src` (`w` x `h`, RGB) resized to `ow` x `oh` as PIL's
/// `Image.resize` does (horizontal pass first, each pass rounded to bytes; nearest by its
/// affine sampling). Only those output pixels are computed, so memory follows the crop,
/// and each equals the full resize's.
fn resize_window(
    src: &image::RgbImage,
    (ow, oh): (usize, usize),
    f: Interpolation,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> Vec<[u8; 3]> {
    let (w, h) = (src.width() as usize, src.height() as usize);
    let px = |x: usize, y: usize| src.get_pixel(x as u32, y as u32).0;
    if f == Interpolation::Nearest {
        let pick = |o: usize, n_in: usize, n_out: usize| {
            (((o as f64 + 0.5) * (n_in as f64 / n_out as f64)) as usize).min(n_in - 1)
        };
        return rows
            .flat_map(|y| cols.clone().map(move |x| (x, y)))
            .map(|(x, y)| px(pick(x, w, ow), pick(y, h, oh)))
            .collect();
    }
    let (same_w, same_h) = (w == ow, h == oh);
    let kx = (!same_w).then(|| coeffs(w, ow, f, cols.clone()));
    let ky = (!same_h).then(|| coeffs(h, oh, f, rows.clone()));
    // The source rows the vertical pass reads.
    let (y0, y1) = match &ky {
        Some(k) => (
            k.iter().map(|(s, _)| *s).min().unwrap_or(0),
            k.iter().map(|(s, w)| s + w.len()).max().unwrap_or(0),
        ),
        None => (rows.start, rows.end),
    };
    let nc = cols.len();
    // Horizontal pass over the rows needed: [y1 - y0][nc] bytes.
    let mut tmp = vec![[0u8; 3]; (y1 - y0) * nc];
    for y in y0..y1 {
        for (i, x) in cols.clone().enumerate() {
            tmp[(y - y0) * nc + i] = match &kx {
                None => px(x, y),
                Some(k) => {
                    let (s, ws) = &k[i];
                    taps(ws, |j| px(s + j, y))
                }
            };
        }
    }
    let mut out = Vec::with_capacity(rows.len() * nc);
    for (r, y) in rows.clone().enumerate() {
        for i in 0..nc {
            out.push(match &ky {
                None => tmp[(y - y0) * nc + i],
                Some(k) => {
                    let (s, ws) = &k[r];
                    taps(ws, |j| tmp[(s + j - y0) * nc + i])
                }
            });
        }
    }
    out
}

/// Where a `crop`-long window starts along an axis of `n` (negative: padded), as
/// torchvision's `center_crop` and timm's `CenterCropOrPad` place it.
fn crop_start(n: usize, crop: usize) -> i64 {
    if crop > n {
        -(((crop - n) / 2) as i64)
    } else {
        round_half_even((n as f64 - crop as f64) / 2.0)
    }
}

/// The scaled size (height, width) of an `h` x `w` image before the crop.
fn scaled(p: &Preprocess, h: usize, w: usize) -> (usize, usize) {
    let [sh, sw] = p.scale_size();
    let keep_ratio = |longest: f64| {
        // timm's ResizeKeepRatio: one ratio for both sides, Python's round.
        let (rh, rw) = (h as f64 / sh as f64, w as f64 / sw as f64);
        let ratio = rh.max(rw) * longest + rh.min(rw) * (1.0 - longest);
        (
            round_half_even(h as f64 / ratio).max(1) as usize,
            round_half_even(w as f64 / ratio).max(1) as usize,
        )
    };
    match p.crop_mode {
        CropMode::Squash => (sh, sw),
        CropMode::Border => keep_ratio(1.0),
        CropMode::Center if sh == sw => {
            // torchvision's Resize(int): the shorter side to `s`, the longer one scaled and
            // truncated.
            let s = sh;
            if w <= h {
                (((s as f64 * h as f64 / w as f64) as usize).max(1), s)
            } else {
                (s, ((s as f64 * w as f64 / h as f64) as usize).max(1))
            }
        }
        CropMode::Center => keep_ratio(0.0),
    }
}

/// The eval transform ([`Preprocess`]) + `ToTensor` + `Normalize`: a `[3, h, w]` tensor,
/// as one image of a batch. Resized pixels equal PIL's; only those the crop keeps are
/// computed.
pub fn to_chw(img: &DynamicImage, p: &Preprocess) -> Vec<f32> {
    let mut rgb = img.to_rgb8();
    // An empty image (which `decode` refuses, but a caller can build one) is one black
    // pixel: no size to scale from.
    if rgb.width() == 0 || rgb.height() == 0 {
        rgb = image::RgbImage::new(1, 1);
    }
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let (nh, nw) = scaled(p, h, w);
    let [ch, cw] = p.size;
    let (top, left) = (crop_start(nh, ch), crop_start(nw, cw));
    // The resized pixels the crop reads.
    let rows = top.max(0) as usize..((top + ch as i64).min(nh as i64)) as usize;
    let cols = left.max(0) as usize..((left + cw as i64).min(nw as i64)) as usize;
    let pixels = resize_window(&rgb, (nw, nh), p.interpolation, rows.clone(), cols.clone());
    // Padding: black for a crop, the mean colour for a border (timm's fill).
    let fill: [u8; 3] = match p.crop_mode {
        CropMode::Border => p
            .mean
            .map(|m| round_half_even(255.0 * m as f64).clamp(0, 255) as u8),
        _ => [0; 3],
    };
    let mut out = vec![0f32; 3 * ch * cw];
    for y in 0..ch {
        for x in 0..cw {
            let (sy, sx) = (y as i64 + top, x as i64 + left);
            let inside = (rows.start as i64..rows.end as i64).contains(&sy)
                && (cols.start as i64..cols.end as i64).contains(&sx);
            let px = if inside {
                pixels[(sy as usize - rows.start) * cols.len() + (sx as usize - cols.start)]
            } else {
                fill
            };
            for c in 0..3 {
                out[(c * ch + y) * cw + x] = (px[c] as f32 / 255.0 - p.mean[c]) / p.std[c];
            }
        }
    }
    out
}

/// Decode and preprocess several images into one `[N, 3, h, w]` batch.
pub fn batch(images: &[DynamicImage], p: &Preprocess) -> Tensor {
    let data: Vec<f32> = images.iter().flat_map(|i| to_chw(i, p)).collect();
    Tensor::new([images.len(), 3, p.size[0], p.size[1]], data).expect("sizes match")
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
        let p = Preprocess::resize_crop(8, 4, [0.5; 3], [0.5; 3]);
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
        let p = Preprocess::resize_crop(256, 224, [0.0; 3], [1.0; 3]);
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
        let p = Preprocess::resize_crop(8, 6, [0.5; 3], [0.5; 3]);
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

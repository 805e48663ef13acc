//! NumPy `.npy` tensors (float32 or float64, C order) in and out, for the CLI and any
//! native caller. A header is checked against the bytes that follow it before anything
//! is allocated, so a file that lies about its shape is an error, not a huge allocation.

use crate::tensor::Tensor;
use std::io::Read;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NpyError(pub String);

/// Headers longer than this are refused before they are read (numpy writes ~128 bytes).
const MAX_HEADER: u64 = 64 << 10;

/// A tensor from `.npy` data of `len` bytes in all (the header included).
pub fn read<R: Read>(mut reader: R, len: u64) -> Result<Tensor, NpyError> {
    let bad = |m: String| NpyError(m);
    let io = |e: std::io::Error| bad(e.to_string());
    // The preamble first: the header's length is checked before the parser allocates it.
    // Version 1 stores it in 2 bytes, versions 2 and 3 in 4.
    let mut head = Vec::with_capacity(12);
    (&mut reader).take(10).read_to_end(&mut head).map_err(io)?;
    if head.len() < 10 || &head[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let header = match head[6] {
        1 => u16::from_le_bytes([head[8], head[9]]) as u64,
        2 | 3 => {
            (&mut reader).take(2).read_to_end(&mut head).map_err(io)?;
            let b = head
                .get(8..12)
                .ok_or_else(|| bad("the preamble is cut short".into()))?;
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64
        }
        v => return Err(bad(format!("not a .npy file (format version {v})"))),
    };
    if header > MAX_HEADER || head.len() as u64 + header > len {
        return Err(bad(format!(
            "the header's length {header} is beyond the {len}-byte file or the {MAX_HEADER}-byte limit"
        )));
    }
    // The header too: its parser backtracks badly on deep nesting (a 71-byte file of '['
    // took over 20 s), and a float array's header is a flat dict: `{'descr': '<f4',
    // 'fortran_order': False, 'shape': (2, 3), }`.
    let start = head.len();
    (&mut reader)
        .take(header)
        .read_to_end(&mut head)
        .map_err(io)?;
    let text = &head[start..];
    if (text.len() as u64) < header {
        return Err(bad("the header is cut short".into()));
    }
    let mut depth = 0i32;
    for &c in text {
        depth += match c {
            b'{' | b'(' | b'[' => 1,
            b'}' | b')' | b']' => -1,
            _ => 0,
        };
        if !(0..=2).contains(&depth) || !c.is_ascii() {
            return Err(bad("the header is not a plain float array's".into()));
        }
    }
    // npyz multiplies the dimensions (and their runs, for strides) unchecked: dimensions
    // whose product passes u64 are refused here first.
    let text = std::str::from_utf8(text).map_err(|_| bad("the header is not ASCII".into()))?;
    if let Some(dims) = header_dims(text) {
        let product = dims
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(1u64, |a, &d| a.checked_mul(d));
        if product.is_none() {
            return Err(bad(format!(
                "the header's shape {dims:?} needs more data than the {len}-byte file holds"
            )));
        }
    }
    let npy = npyz::NpyFile::new(std::io::Cursor::new(head).chain(reader))
        .map_err(|e| bad(format!("not a .npy file: {e}")))?;
    if npy.order() != npyz::Order::C {
        return Err(bad("Fortran-order arrays are not supported".into()));
    }
    let dims = npy.shape().to_vec();
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| bad(format!("the shape {dims:?} does not fit this machine")))?;
    let item = match npy.dtype() {
        npyz::DType::Plain(t) if matches!(t.to_string().as_str(), "<f4" | ">f4") => 4,
        npyz::DType::Plain(t) if matches!(t.to_string().as_str(), "<f8" | ">f8") => 8,
        d => return Err(bad(format!("dtype {d:?} is not float32 or float64"))),
    };
    let count = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    if count
        .and_then(|c| c.checked_mul(item))
        .is_none_or(|b| b > len)
    {
        return Err(bad(format!(
            "the header's shape {dims:?} needs more data than the {len}-byte file holds"
        )));
    }
    let data: Vec<f32> = if item == 4 {
        npy.into_vec::<f32>()
    } else {
        npy.into_vec::<f64>()
            .map(|v| v.into_iter().map(|x| x as f32).collect())
    }
    .map_err(|e| bad(format!("reading the data: {e}")))?;
    Tensor::new(shape, data).map_err(|e| bad(e.to_string()))
}

/// The dimensions in a header's `'shape': (d0, d1, ...)`, where they are plain integers
/// (the parser judges everything else).
fn header_dims(text: &str) -> Option<Vec<u64>> {
    let at = text.find("'shape'").or_else(|| text.find("\"shape\""))?;
    let rest = &text[at..];
    let open = rest.find('(')?;
    let close = open + rest[open..].find(')')?;
    rest[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.trim_end_matches(['L', 'l']).parse().ok())
        .collect()
}

/// A tensor from a `.npy` file; errors name the file.
pub fn read_file(path: &Path) -> Result<Tensor, NpyError> {
    let named = |e: String| NpyError(format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| named(e.to_string()))?;
    let len = file.metadata().map_err(|e| named(e.to_string()))?.len();
    read(std::io::BufReader::new(file), len).map_err(|e| named(e.0))
}

/// Write `t` as a float32 `.npy` file.
pub fn write_file(path: &Path, t: &Tensor) -> Result<(), NpyError> {
    use npyz::WriterBuilder;
    let named = |e: std::io::Error| NpyError(format!("{}: {e}", path.display()));
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    let file = std::fs::File::create(path).map_err(named)?;
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .map_err(named)?;
    w.extend(t.data().iter().copied()).map_err(named)?;
    w.finish().map_err(named)
}

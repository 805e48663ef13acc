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
    // The preamble first: the header's length is checked before the parser allocates it.
    let mut pre = [0u8; 12];
    let got = read_up_to(&mut reader, &mut pre).map_err(|e| bad(e.to_string()))?;
    let pre = &pre[..got];
    if got < 10 || &pre[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let (header, start) = match pre[6] {
        1 => (u16::from_le_bytes([pre[8], pre[9]]) as u64, 10),
        2 | 3 if got == 12 => (
            u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as u64,
            12,
        ),
        v => return Err(bad(format!("not a .npy file (format version {v})"))),
    };
    if header > MAX_HEADER || start + header > len {
        return Err(bad(format!(
            "the header's length {header} is beyond the {len}-byte file or the {MAX_HEADER}-byte limit"
        )));
    }
    // The header too: its parser backtracks badly on deep nesting (a 71-byte file of '['
    // took over 20 s), and a float array's header is a flat dict: `{'descr': '<f4',
    // 'fortran_order': False, 'shape': (2, 3), }`.
    // (For version 1 the preamble read already holds the header's first bytes.)
    let have = (got - start as usize).min(header as usize);
    let mut text = pre[start as usize..start as usize + have].to_vec();
    text.resize(header as usize, 0);
    let more = read_up_to(&mut reader, &mut text[have..]).map_err(|e| bad(e.to_string()))?;
    if have + more < text.len() {
        return Err(bad("the header is cut short".into()));
    }
    let mut depth = 0i32;
    for &c in &text {
        depth += match c {
            b'{' | b'(' | b'[' => 1,
            b'}' | b')' | b']' => -1,
            _ => 0,
        };
        if !(0..=2).contains(&depth) || !c.is_ascii() {
            return Err(bad("the header is not a plain float array's".into()));
        }
    }
    let mut head = pre[..start as usize].to_vec();
    head.extend(text);
    // What the preamble read past a short header is data.
    head.extend(&pre[(start + header).min(got as u64) as usize..]);
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

/// Fills `buf` as far as the reader goes; the count read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
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

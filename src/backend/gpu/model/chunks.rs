//! Batches larger than one storage binding holds run in chunks of images: how large a
//! chunk may be, and how chunks sit in the upload and read-back buffers.

use crate::error::{Error, Result};
use crate::lower::Program;
use crate::tensor::numel;

/// The largest batch chunk whose every activation fits one binding of `limit` bytes.
pub(super) fn batch_chunk(program: &Program, limit: u64, elem: usize) -> Result<usize> {
    let n = program.shape(program.input)[0];
    let per_image = |v| (numel(&program.shape(v)[1..]) * elem) as u64;
    let (biggest, big_v) = program
        .steps
        .iter()
        .map(|s| (per_image(s.output), s.nodes.join("+")))
        .chain([(per_image(program.input), "input".to_string())])
        .max_by_key(|(b, _)| *b)
        .expect("an input");
    if biggest > limit {
        return Err(Error::DeviceLimit(format!(
            "activation of '{big_v}' needs {biggest} bytes per image, more than the {limit}-byte storage binding limit"
        )));
    }
    Ok(((limit / biggest) as usize).clamp(1, n))
}

/// Bytes between batch chunks of `images` images of `image_bytes` each in the upload and
/// read-back buffers: every chunk starts on a 4-byte word (copies move whole words; at
/// half precision an image may hold an odd number of values).
pub(super) fn chunk_stride(images: usize, image_bytes: usize) -> usize {
    (images * image_bytes).next_multiple_of(4)
}

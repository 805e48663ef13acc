//! PyTorch's output-size rules, shared by the builder (checks) and the backends (indexing).

/// Convolution output length along one axis, or `None` if the window does not fit.
pub fn conv_out(
    input: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
) -> Option<usize> {
    // Checked: parameters come from callers and files; an overflow is "does not fit".
    let span = dilation.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
    let padded = input.checked_add(pad.checked_mul(2)?)?;
    if padded < span || stride == 0 {
        return None;
    }
    Some((padded - span) / stride + 1)
}

/// Pooling output length (PyTorch `pooling_output_shape`): with `ceil_mode` the last
/// window must start inside the input or the left padding, else it is dropped.
pub fn pool_out(
    input: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ceil_mode: bool,
) -> Option<usize> {
    let padded = input.checked_add(pad.checked_mul(2)?)?;
    if padded < k || stride == 0 {
        return None;
    }
    let num = padded - k;
    let mut out = if ceil_mode {
        num.div_ceil(stride)
    } else {
        num / stride
    } + 1;
    if ceil_mode && (out - 1) * stride >= input + pad {
        // (out - 1) * stride <= num < padded, and input + pad <= padded: no overflow.
        out -= 1;
    }
    Some(out)
}

/// Adaptive pooling window `[start, end)` of output index `o` (PyTorch's floor/ceil rule).
pub fn adaptive_range(o: usize, input: usize, output: usize) -> (usize, usize) {
    let start = (o * input) / output;
    let end = ((o + 1) * input).div_ceil(output);
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_ceil_mode_drops_a_window_starting_in_right_padding() {
        // k2 s3 p1 on 7: ceil((9-2)/3)+1 = 4, but window 3 would start at 9-1 >= 7+1.
        assert_eq!(pool_out(7, 2, 3, 1, true), Some(3));
        assert_eq!(pool_out(14, 3, 2, 0, true), Some(7));
        assert_eq!(pool_out(13, 3, 2, 0, false), Some(6));
        assert_eq!(pool_out(2, 3, 2, 0, false), None);
    }

    #[test]
    fn adaptive_windows_cover_non_divisible_inputs() {
        let r: Vec<_> = (0..6).map(|o| adaptive_range(o, 13, 6)).collect();
        assert_eq!(r, [(0, 3), (2, 5), (4, 7), (6, 9), (8, 11), (10, 13)]);
        assert_eq!(adaptive_range(3, 1, 7), (0, 1));
    }
}

//! How activations are laid out between steps ([`Layout`]), and the helpers both the
//! direct convolution and the pooling kernels need to read and write each layout.

/// How an activation is stored between steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[n][c][h][w]`, PyTorch's.
    Planes,
    /// `[n][c / 8][h][w][c % 8]`: the order the AVX2 channel tile reads its input in and
    /// can store its output in, kept from one such layer to the next so that neither
    /// copies into it nor transposes out of it (ONNX Runtime's NCHWc).
    Blocked,
    /// `[n][c][h + 2 * pad[0]][w + 2 * pad[1]]` with zero borders, then zeros past the last
    /// plane ([`padded_len`]): the padded copy a stride-1 convolution reads, stored so by
    /// the convolution before it (its only reader), so that neither copies. Planes
    /// otherwise; channel tiles of [`super::direct::DirectConv::run`] only.
    Padded([usize; 2]),
}

/// Floats past the last plane of a [`Layout::Padded`] value: the reads of a row's last
/// tile past its end (up to `nr - 1` pixels) stay inside, as in a phase copy's slack.
const PADDED_SLACK: usize = 16;

/// Floats of a value of shape `[n, c, h, w]` stored as [`Layout::Padded`] with `pad`.
pub fn padded_len([n, c, h, w]: [usize; 4], [ph, pw]: [usize; 2]) -> usize {
    let wp = w + 2 * pw;
    n * c * (h + 2 * ph) * wp + wp + PADDED_SLACK
}

/// Zero the borders and the slack of `out`, a [`Layout::Padded`] value of shape
/// `[n, c, h, w]`: its slot is shared with other values, so they hold anything.
pub(super) fn zero_borders(out: &mut [f32], [n, c, h, w]: [usize; 4], [ph, pw]: [usize; 2]) {
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    let (body, slack) = out.split_at_mut(n * c * hp * wp);
    slack.fill(0.0);
    super::par::par_chunks(body, hp * wp, |_, plane| {
        // The top rows and the first row's left border, then each row's right border
        // with the next row's left one, then the last row's right border and the bottom.
        plane[..ph * wp + pw].fill(0.0);
        for y in ph..ph + h {
            let end = ((y + 1) * wp + pw).min(hp * wp);
            plane[y * wp + pw + w..end].fill(0.0);
        }
        plane[(ph + h) * wp..].fill(0.0);
    });
}

/// Channels per block of [`Layout::Blocked`], which is also the order the AVX2 channel
/// tile reads its interleaved copies in (see [`super::direct::Shape::lanes`]).
pub const BLOCKED_LANES: usize = 8;

/// Where plane `i` (image `i / c`, channel `i % c`) keeps pixel `p` in the blocked layout
/// `[n][c / 8][hw][8]` (tests).
#[cfg(test)]
pub(super) fn blocked_index(i: usize, p: usize, c: usize, hw: usize) -> usize {
    let (b, ci) = (i / c, i % c);
    ((b * c / 8 + ci / 8) * hw + p) * 8 + ci % 8
}

/// `[n][c][hw]` to `[n][c / 8][hw][8]` (tests of the blocked layout).
#[cfg(test)]
pub(super) fn to_blocked(x: &[f32], [n, c, hw]: [usize; 3]) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for i in 0..n * c {
        for p in 0..hw {
            y[blocked_index(i, p, c, hw)] = x[i * hw + p];
        }
    }
    y
}

/// [`to_blocked`] undone.
#[cfg(test)]
pub(super) fn from_blocked(y: &[f32], [n, c, hw]: [usize; 3]) -> Vec<f32> {
    let mut x = vec![0f32; y.len()];
    for i in 0..n * c {
        for p in 0..hw {
            x[i * hw + p] = y[blocked_index(i, p, c, hw)];
        }
    }
    x
}

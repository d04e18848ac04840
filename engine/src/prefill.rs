//! How a prompt goes through the KV cache before decoding: in one batch, or in chunks each run
//! after the cache holds the ones before (token by token is chunks of 1), and how the chunks'
//! checkpoint taps join into the one-batch layout, so both are compared with the same dumps.

use crate::tap::{Observer, Tap, TapValue, Taps};
use std::collections::BTreeMap;

/// How the traced run prefills its prompt (`parity sweep`'s prefill axis).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Prefill {
    /// Every prompt token in one forward pass (what the suite runs).
    #[default]
    OneBatch,
    /// Forward passes of at most this many tokens, each at the positions after the cache's.
    Chunks(usize),
}

impl std::str::FromStr for Prefill {
    type Err = String;

    /// `one-batch`, `token-by-token` (chunks of 1) or `chunks:N` (N at least 1).
    fn from_str(spec: &str) -> Result<Prefill, String> {
        match spec {
            "one-batch" => Ok(Prefill::OneBatch),
            "token-by-token" => Ok(Prefill::Chunks(1)),
            _ => spec
                .strip_prefix("chunks:")
                .and_then(|n| n.parse().ok())
                .filter(|&n: &usize| n > 0)
                .map(Prefill::Chunks)
                .ok_or_else(|| format!("prefill {spec:?}: one-batch, token-by-token or chunks:N (N a whole number above 0)")),
        }
    }
}

impl std::fmt::Display for Prefill {
    /// The spelling [`FromStr`](std::str::FromStr) reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prefill::OneBatch => f.write_str("one-batch"),
            Prefill::Chunks(1) => f.write_str("token-by-token"),
            Prefill::Chunks(n) => write!(f, "chunks:{n}"),
        }
    }
}

/// Collects the taps of a prefill's chunks and records them joined as one batch's would be: rows
/// of position-major taps (`[n, ...]`) one after another, each chunk's attention rows
/// (`[H, n, pos0+n]`) in their place of `[H, T, T]` (zeros where masked), and the KV cache as the
/// last chunk left it (`[KV, T, hd]`).
#[derive(Default)]
pub struct ChunkJoin {
    /// Per tap and layer, each chunk's value in order.
    chunks: BTreeMap<(Tap, Option<usize>), Vec<Chunk>>,
}

/// One chunk's value of one tap: its shape and data.
type Chunk = (Vec<usize>, Vec<f32>);

impl Observer for ChunkJoin {
    fn observe(&mut self, tap: Tap, layer: Option<usize>, value: TapValue) {
        if let TapValue::F32 { shape, data } = value {
            self.chunks.entry((tap, layer)).or_default().push((shape, data));
        }
    }
}

impl ChunkJoin {
    /// Records every joined tap of a prompt of `t` tokens; a tap whose chunks do not join into
    /// that (a chunk missing, shapes that disagree) is left out, so the harness reports it missing.
    pub fn finish(self, t: usize, taps: &mut Taps) {
        for ((tap, layer), chunks) in self.chunks {
            if let Some((shape, data)) = join(tap, chunks, t) {
                taps.record(tap, layer, || TapValue::f32(&shape, data));
            }
        }
    }
}

/// One tap's chunks joined into the one-batch layout for `t` positions.
fn join(tap: Tap, mut chunks: Vec<Chunk>, t: usize) -> Option<Chunk> {
    match tap {
        // The cache after the last chunk holds every position.
        Tap::KCache | Tap::VCache => chunks.pop().filter(|(shape, _)| shape.get(1) == Some(&t)),
        Tap::AttnProbs => {
            let heads = *chunks.first()?.0.first()?;
            let mut out = vec![0.0f32; heads * t * t];
            let mut pos0 = 0;
            for (shape, data) in &chunks {
                let [h, n, width] = shape[..] else { return None };
                if h != heads || width != pos0 + n || pos0 + n > t {
                    return None;
                }
                for head in 0..h {
                    for row in 0..n {
                        let src = &data[(head * n + row) * width..(head * n + row + 1) * width];
                        out[(head * t + pos0 + row) * t..][..width].copy_from_slice(src);
                    }
                }
                pos0 += n;
            }
            (pos0 == t).then(|| (vec![heads, t, t], out))
        }
        // Every other tap is position-major: rows one after another.
        _ => {
            let rest = chunks.first()?.0.get(1..)?.to_vec();
            let mut data = Vec::new();
            let mut rows = 0;
            for (shape, values) in chunks {
                if shape.get(1..)? != rest.as_slice() {
                    return None;
                }
                rows += shape.first()?;
                data.extend(values);
            }
            (rows == t).then(|| (std::iter::once(t).chain(rest).collect(), data))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tap::Recorder;

    #[test]
    fn prefill_modes_read_back_from_their_spelling() {
        for (text, mode) in [("one-batch", Prefill::OneBatch), ("token-by-token", Prefill::Chunks(1)), ("chunks:64", Prefill::Chunks(64))] {
            assert_eq!(text.parse::<Prefill>(), Ok(mode));
            assert_eq!(mode.to_string(), text);
        }
        assert_eq!("chunks:1".parse::<Prefill>(), Ok(Prefill::Chunks(1)));
        for bad in ["chunks:0", "chunks:x", "chunks", "batch"] {
            assert!(bad.parse::<Prefill>().unwrap_err().contains("one-batch, token-by-token or chunks:N"), "{bad}");
        }
    }

    #[test]
    fn chunks_join_into_the_one_batch_layout() {
        // Three positions in chunks of 2 and 1, one head, d = 2.
        let mut join = ChunkJoin::default();
        join.observe(Tap::AttnNorm, Some(0), TapValue::f32(&[2, 2], vec![1., 2., 3., 4.]));
        join.observe(Tap::AttnProbs, Some(0), TapValue::f32(&[1, 2, 2], vec![1., 0., 0.5, 0.5]));
        join.observe(Tap::KCache, Some(0), TapValue::f32(&[1, 2, 1], vec![7., 8.]));
        join.observe(Tap::AttnNorm, Some(0), TapValue::f32(&[1, 2], vec![5., 6.]));
        join.observe(Tap::AttnProbs, Some(0), TapValue::f32(&[1, 1, 3], vec![0.2, 0.3, 0.5]));
        join.observe(Tap::KCache, Some(0), TapValue::f32(&[1, 3, 1], vec![7., 8., 9.]));
        let mut rec = Recorder::default();
        join.finish(3, &mut Taps::new(&mut rec));
        assert_eq!(rec.tensors["blk.0.attn_norm"], TapValue::f32(&[3, 2], vec![1., 2., 3., 4., 5., 6.]));
        assert_eq!(rec.tensors["blk.0.attn_probs"], TapValue::f32(&[1, 3, 3], vec![1., 0., 0., 0.5, 0.5, 0., 0.2, 0.3, 0.5]));
        assert_eq!(rec.tensors["blk.0.k_cache"], TapValue::f32(&[1, 3, 1], vec![7., 8., 9.]));
        // A chunk missing: nothing joined is recorded rather than a short tensor.
        let mut join = ChunkJoin::default();
        join.observe(Tap::AttnNorm, Some(0), TapValue::f32(&[2, 2], vec![1., 2., 3., 4.]));
        let mut rec = Recorder::default();
        join.finish(3, &mut Taps::new(&mut rec));
        assert!(rec.tensors.is_empty());
    }
}

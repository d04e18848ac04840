//! A checkpoint tensor as the harness sees it: a row-major shape and its values.

use std::sync::Arc;

/// The two element types the dump contract allows: f32 activations and i64 token ids.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(F32Data),
    Ids(Vec<i64>),
}

/// f32 values held in memory (the engine's taps) or read in place from a memory-mapped .npy
/// file (reference dumps: hundreds of megabytes per run, compared without a copy).
#[derive(Clone)]
pub struct F32Data(Storage);

#[derive(Clone)]
enum Storage {
    Owned(Vec<f32>),
    /// `len` values at byte `start` of `map`; 4-aligned and on a little-endian host (checked by
    /// [`F32Data::mapped`], the only constructor).
    Mapped { map: Arc<memmap2::Mmap>, start: usize, len: usize },
}

impl F32Data {
    /// The little-endian f32 values in `map[bytes]`, in place, or `None` when they cannot be read
    /// in place (unaligned, a length that is not whole values, a big-endian host).
    pub fn mapped(map: Arc<memmap2::Mmap>, bytes: std::ops::Range<usize>) -> Option<F32Data> {
        let in_map = bytes.end <= map.len() && bytes.start <= bytes.end;
        let aligned = (map.as_ptr() as usize).wrapping_add(bytes.start) % std::mem::align_of::<f32>() == 0;
        if !in_map || !aligned || bytes.len() % 4 != 0 || cfg!(target_endian = "big") {
            return None;
        }
        Some(F32Data(Storage::Mapped { map, start: bytes.start, len: bytes.len() / 4 }))
    }

    /// Whether the values are read in place from a map (else they are owned).
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Storage::Mapped { .. })
    }
}

impl From<Vec<f32>> for F32Data {
    fn from(values: Vec<f32>) -> F32Data {
        F32Data(Storage::Owned(values))
    }
}

impl std::ops::Deref for F32Data {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &self.0 {
            Storage::Owned(v) => v,
            // SAFETY: `mapped` checked that the range lies in the map, is 4-aligned and holds
            // `len` whole values, and every bit pattern is a valid f32. The map lives as long as
            // `self` (the Arc).
            Storage::Mapped { map, start, len } => unsafe { std::slice::from_raw_parts(map.as_ptr().add(*start) as *const f32, *len) },
        }
    }
}

impl PartialEq for F32Data {
    fn eq(&self, other: &F32Data) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for F32Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub values: Values,
}

impl Tensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor { shape, values: Values::F32(data.into()) }
    }

    pub fn ids(shape: Vec<usize>, data: Vec<i64>) -> Tensor {
        Tensor { shape, values: Values::Ids(data) }
    }

    /// Number of values actually held (a 0-d tensor holds one).
    pub fn len(&self) -> usize {
        match &self.values {
            Values::F32(v) => v.len(),
            Values::Ids(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_ids(&self) -> bool {
        matches!(self.values, Values::Ids(_))
    }

    /// The manifest's spelling of the element type: `"f32"` or `"i64"`.
    pub fn dtype_name(&self) -> &'static str {
        match self.values {
            Values::F32(_) => "f32",
            Values::Ids(_) => "i64",
        }
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.values {
            Values::F32(v) => Some(&**v),
            Values::Ids(_) => None,
        }
    }

    pub fn as_ids(&self) -> Option<&[i64]> {
        match &self.values {
            Values::Ids(v) => Some(v),
            Values::F32(_) => None,
        }
    }
}

/// The row-major multi-index of flat position `flat` in `shape` (empty for a 0-d tensor).
pub fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (slot, &dim) in index.iter_mut().zip(shape).rev() {
        if dim > 0 {
            *slot = flat % dim;
            flat /= dim;
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unravel_is_row_major() {
        assert_eq!(unravel(0, &[2, 3]), vec![0, 0]);
        assert_eq!(unravel(4, &[2, 3]), vec![1, 1]);
        assert_eq!(unravel(23, &[2, 3, 4]), vec![1, 2, 3]);
        assert_eq!(unravel(0, &[]), Vec::<usize>::new());
    }

    #[test]
    fn a_zero_d_tensor_holds_one_value() {
        let t = Tensor::ids(vec![], vec![7]);
        assert_eq!(t.len(), 1);
        assert!(t.is_ids() && !t.is_empty());
        assert_eq!(t.dtype_name(), "i64");
    }
}

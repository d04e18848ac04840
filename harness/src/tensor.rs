//! A checkpoint tensor as the harness sees it: a row-major shape and its values.

/// The two element types the dump contract allows: f32 activations and i64 token ids.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    Ids(Vec<i64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub values: Values,
}

impl Tensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor { shape, values: Values::F32(data) }
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

    /// Same shape and the same bits in every value (0.0 and -0.0 differ; equal NaN bits match).
    pub fn bit_identical(&self, other: &Tensor) -> bool {
        self.shape == other.shape
            && match (&self.values, &other.values) {
                (Values::F32(x), Values::F32(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
                (Values::Ids(x), Values::Ids(y)) => x == y,
                _ => false,
            }
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
            Values::F32(v) => Some(v),
            Values::Ids(_) => None,
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
    fn bit_identity_tells_apart_values_that_compare_equal() {
        let a = Tensor::f32(vec![2], vec![0.0, 1.0]);
        let b = Tensor::f32(vec![2], vec![-0.0, 1.0]);
        assert!(a.bit_identical(&a.clone()));
        assert!(!a.bit_identical(&b), "0.0 and -0.0 are equal as numbers, not as bits");
        let nan = Tensor::f32(vec![1], vec![f32::NAN]);
        assert!(nan.bit_identical(&nan.clone()), "the same NaN bits twice are deterministic");
    }

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

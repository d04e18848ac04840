//! A hardened reader and a writer for the .npy files reference dumps are made of.
//!
//! Only what the dump contract allows is accepted: little-endian f32 (`<f4`) or i64 (`<i8`), C order,
//! header versions 1 to 3. The file's length is checked against the header's shape before anything
//! is allocated, so a lying header cannot make us allocate or read past the end.

use crate::tensor::{Tensor, Values};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"\x93NUMPY";
/// numpy itself refuses larger headers without `allow_pickle`-style opt-ins; ours are ~100 bytes.
const MAX_HEADER: usize = 64 * 1024;

/// Bytes [`read_from`] reads before it knows the header's length.
const FIRST_READ: usize = 512;

/// A .npy file we will not read, with the file named.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct NpyError {
    pub path: PathBuf,
    pub problem: Problem,
}

/// What is wrong with a .npy file.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a .npy file (bad magic bytes or shorter than its preamble)")]
    NotNpy,
    #[error("unsupported .npy format version {0}.{1} (expected 1.0, 2.0 or 3.0)")]
    Version(u8, u8),
    #[error("header of {0} bytes exceeds the 64 KiB limit")]
    HeaderTooLarge(usize),
    #[error("file ends inside the header")]
    TruncatedHeader,
    #[error("malformed header: {0}")]
    Header(String),
    #[error("dtype {0:?} refused: only '<f4' (f32) and '<i8' (i64) are accepted; object/pickle and big-endian data never are")]
    Dtype(String),
    #[error("fortran_order = True refused: dumps are C order")]
    FortranOrder,
    #[error("shape {0:?} has more elements than fit in memory")]
    ShapeOverflow(Vec<usize>),
    #[error("shape {shape:?} needs {expected} data bytes but the file holds {actual}")]
    DataLength { shape: Vec<usize>, expected: usize, actual: usize },
}

/// Reads one .npy file as a [`Tensor`]: the header first, checked against the file's length,
/// then the data straight into the tensor's values (one copy out of the page cache; a memory map
/// was slower here, its page faults and unmaps costing more than the copy on 3,600 tensors a run).
pub fn read(path: &Path) -> Result<Tensor, NpyError> {
    let io = |e| NpyError { path: path.to_path_buf(), problem: Problem::Io(e) };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    read_from(file, len, path)
}

/// [`read`] of a file the caller opened and measured (`len` bytes; `path` names it in errors).
pub fn read_from(mut file: File, len: u64, path: &Path) -> Result<Tensor, NpyError> {
    let err = |problem: Problem| NpyError { path: path.to_path_buf(), problem };
    // A length past usize fails the data length check below.
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    // Headers are 128 bytes as numpy writes them: read a little first, and up to the most a
    // header may take only if it is longer (a large head zeroed and copied per tensor adds up
    // over the thousands of tensors of a run; docs/performance.md).
    let most = len.min(PREAMBLE_MAX + MAX_HEADER);
    let mut head = vec![0u8; len.min(FIRST_READ)];
    file.read_exact(&mut head).map_err(|e| err(Problem::Io(e)))?;
    let (header, data_start) = match validate(&head, len) {
        Err(Problem::TruncatedHeader) if head.len() < most => {
            let start = head.len();
            head.resize(most, 0);
            file.read_exact(&mut head[start..]).map_err(|e| err(Problem::Io(e)))?;
            validate(&head, len)
        }
        first => first,
    }
    .map_err(err)?;
    let count = (len - data_start) / header.item_size();
    let already = &head[data_start..];
    let values = match header.kind {
        Kind::F32 => Values::F32(read_values(count, already, &mut file).map_err(|e| err(Problem::Io(e)))?),
        Kind::I64 => Values::Ids(read_values(count, already, &mut file).map_err(|e| err(Problem::Io(e)))?),
    };
    Ok(Tensor { shape: header.shape, values })
}

/// The element types a dump holds (private, so only these two: see [`read_values`]).
trait Element: Copy {
    /// The value whose little-endian bytes `self` holds.
    fn le_to_native(self) -> Self;
}

impl Element for f32 {
    fn le_to_native(self) -> f32 {
        f32::from_bits(u32::from_le(self.to_bits()))
    }
}

impl Element for i64 {
    fn le_to_native(self) -> i64 {
        i64::from_le(self)
    }
}

/// `count` values read straight into their vector: the data bytes read with the header, then the
/// rest of the file (a file cut short since its length was read is an error, not a short tensor).
fn read_values<T: Element>(count: usize, already: &[u8], file: &mut File) -> std::io::Result<Vec<T>> {
    let mut v = Vec::<T>::with_capacity(count);
    let total = count * std::mem::size_of::<T>();
    let dst = v.as_mut_ptr().cast::<u8>();
    // The caller split `already` off a head no longer than the file, after the data's length
    // was checked: it holds at most the data's bytes. Both writes below rely on it.
    assert!(already.len() <= total, "more data bytes read with the header than the data holds");
    // SAFETY: within the `total` bytes allocated (just above).
    unsafe { std::ptr::copy_nonoverlapping(already.as_ptr(), dst, already.len()) };
    // SAFETY: as above, `dst + already.len()` has `total - already.len()` writable bytes.
    unsafe { read_into(file, dst.add(already.len()), total - already.len())? };
    // SAFETY: all `total` bytes were written; T is f32 or i64, whose every bit pattern is a value.
    unsafe { v.set_len(count) };
    if cfg!(target_endian = "big") {
        v.iter_mut().for_each(|x| *x = x.le_to_native());
    }
    Ok(v)
}

/// Fills `len` bytes at `dst` from the file, straight into memory that was never zeroed (zeroing
/// every tensor only to overwrite it was a measurable part of the comparison).
///
/// # Safety
/// `dst` must be valid for `len` bytes of writes.
#[cfg(unix)]
unsafe fn read_into(file: &mut File, dst: *mut u8, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut filled = 0;
    while filled < len {
        // SAFETY: the caller's promise; `read` writes at most the count it is given.
        match unsafe { libc::read(file.as_raw_fd(), dst.add(filled).cast(), len - filled) } {
            -1 => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => filled += n as usize,
        }
    }
    Ok(())
}

/// Elsewhere the bytes are zeroed first, for a safe slice to read into.
///
/// # Safety
/// `dst` must be valid for `len` bytes of writes.
#[cfg(not(unix))]
unsafe fn read_into(file: &mut File, dst: *mut u8, len: usize) -> std::io::Result<()> {
    // SAFETY: the caller's promise; zeroed first, so the slice is initialized.
    let bytes = unsafe {
        std::ptr::write_bytes(dst, 0, len);
        std::slice::from_raw_parts_mut(dst, len)
    };
    file.read_exact(bytes)
}

/// Parses a whole .npy image held in memory (its values are copied out).
pub fn parse(bytes: &[u8]) -> Result<Tensor, Problem> {
    let (header, data_start) = validate(bytes, bytes.len())?;
    let data = &bytes[data_start..];
    let values = match header.kind {
        Kind::F32 => Values::F32(data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        Kind::I64 => Values::Ids(data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8"))).collect()),
    };
    Ok(Tensor { shape: header.shape, values })
}

/// Magic, version and header length: 12 bytes at most.
const PREAMBLE_MAX: usize = 12;

/// The header of a .npy file of `len` bytes whose first bytes are `head`, and where its data
/// starts; the data's length is proven to match the header's shape before anything is allocated.
fn validate(head: &[u8], len: usize) -> Result<(Header, usize), Problem> {
    if head.len() < MAGIC.len() + 4 || &head[..MAGIC.len()] != MAGIC {
        return Err(Problem::NotNpy);
    }
    let (major, minor) = (head[6], head[7]);
    let (header_len, header_start) = match (major, minor) {
        (1, 0) => (u16::from_le_bytes([head[8], head[9]]) as usize, 10),
        (2, 0) | (3, 0) => {
            if head.len() < PREAMBLE_MAX {
                return Err(Problem::TruncatedHeader);
            }
            (u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize, PREAMBLE_MAX)
        }
        _ => return Err(Problem::Version(major, minor)),
    };
    if header_len > MAX_HEADER {
        return Err(Problem::HeaderTooLarge(header_len));
    }
    let data_start = header_start + header_len;
    if head.len() < data_start {
        return Err(Problem::TruncatedHeader);
    }
    // Version 3 allows UTF-8; our keys and values are ASCII either way.
    let header = std::str::from_utf8(&head[header_start..data_start]).map_err(|_| Problem::Header("not UTF-8".into()))?;
    let header = Header::parse(header)?;
    let count = header.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| Problem::ShapeOverflow(header.shape.clone()))?;
    let expected = count.checked_mul(header.item_size()).ok_or_else(|| Problem::ShapeOverflow(header.shape.clone()))?;
    let actual = len - data_start;
    if actual != expected {
        return Err(Problem::DataLength { shape: header.shape, expected, actual });
    }
    Ok((header, data_start))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    F32,
    I64,
}

#[derive(Debug)]
struct Header {
    kind: Kind,
    shape: Vec<usize>,
}

impl Header {
    fn item_size(&self) -> usize {
        match self.kind {
            Kind::F32 => 4,
            Kind::I64 => 8,
        }
    }

    /// Parses the Python dict literal numpy writes: `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
    /// A small parser of exactly that grammar; nothing is evaluated.
    fn parse(text: &str) -> Result<Header, Problem> {
        let bad = |what: &str| Problem::Header(format!("{what} in {:?}", truncate(text)));
        let body = text.trim_end_matches(['\n', ' ', '\0']).trim();
        let body = body.strip_prefix('{').and_then(|b| b.strip_suffix('}')).ok_or_else(|| bad("not a dict"))?;
        let (mut descr, mut fortran, mut shape) = (None, None, None);
        let mut rest = body.trim();
        while !rest.is_empty() {
            let (key, after) = quoted(rest).ok_or_else(|| bad("expected a quoted key"))?;
            let after = after.trim_start().strip_prefix(':').ok_or_else(|| bad("expected ':'"))?.trim_start();
            let after = match key {
                "descr" => {
                    let (v, a) = quoted(after).ok_or_else(|| Problem::Dtype(after.chars().take(20).collect()))?;
                    descr = Some(v.to_string());
                    a
                }
                "fortran_order" => {
                    if let Some(a) = after.strip_prefix("False") {
                        fortran = Some(false);
                        a
                    } else if let Some(a) = after.strip_prefix("True") {
                        fortran = Some(true);
                        a
                    } else {
                        return Err(bad("fortran_order is not True or False"));
                    }
                }
                "shape" => {
                    let inner = after.strip_prefix('(').ok_or_else(|| bad("shape is not a tuple"))?;
                    let close = inner.find(')').ok_or_else(|| bad("unclosed shape tuple"))?;
                    let mut dims = Vec::new();
                    for part in inner[..close].split(',').map(str::trim).filter(|p| !p.is_empty()) {
                        dims.push(part.trim_end_matches('L').parse::<usize>().map_err(|_| bad("shape holds a non-integer"))?);
                    }
                    shape = Some(dims);
                    &inner[close + 1..]
                }
                _ => return Err(bad(&format!("unexpected key {key:?}"))),
            };
            let after = after.trim_start();
            rest = after.strip_prefix(',').unwrap_or(after).trim_start();
            if !rest.is_empty() && !after.starts_with(',') {
                return Err(bad("expected ','"));
            }
        }
        let descr = descr.ok_or_else(|| bad("no descr"))?;
        let kind = match descr.as_str() {
            "<f4" => Kind::F32,
            "<i8" => Kind::I64,
            _ => return Err(Problem::Dtype(descr)),
        };
        if fortran.ok_or_else(|| bad("no fortran_order"))? {
            return Err(Problem::FortranOrder);
        }
        Ok(Header { kind, shape: shape.ok_or_else(|| bad("no shape"))? })
    }
}

/// A single- or double-quoted Python string at the start of `s` (no escapes: our keys need none),
/// and what follows it.
fn quoted(s: &str) -> Option<(&str, &str)> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let end = s[1..].find(q)? + 1;
    Some((&s[1..end], &s[end + 1..]))
}

fn truncate(s: &str) -> String {
    s.chars().take(120).collect()
}

/// Writes a tensor as a version 1.0 .npy file (header padded to 64 bytes, as numpy does).
pub fn write(path: &Path, tensor: &Tensor) -> Result<(), NpyError> {
    let err = |e: std::io::Error| NpyError { path: path.to_path_buf(), problem: Problem::Io(e) };
    let mut file = File::create(path).map_err(err)?;
    file.write_all(&encode(tensor)).map_err(err)?;
    file.sync_all().map_err(err)
}

/// The bytes of a .npy file holding `tensor`.
pub fn encode(tensor: &Tensor) -> Vec<u8> {
    let descr = if tensor.is_ids() { "<i8" } else { "<f4" };
    let dims: Vec<String> = tensor.shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + tensor.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match &tensor.values {
        Values::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Values::Ids(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder for one test's files (the test removes it when it passes).
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("parity-npy-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A .npy image with the given version and header text, then `data`.
    fn image(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[major, 0]);
        if major == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_the_header_numpy_writes() {
        // np.save of np.arange(6, dtype='<f4').reshape(2, 3), header as numpy 1.x/2.x spells it.
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }          \n";
        let t = parse(&image(1, h, &f32_bytes(&[0., 1., 2., 3., 4., 5.]))).unwrap();
        assert_eq!(t, Tensor::f32(vec![2, 3], vec![0., 1., 2., 3., 4., 5.]));
    }

    #[test]
    fn reads_versions_2_and_3_and_0_d_and_1_d_shapes() {
        let ids: Vec<u8> = 42i64.to_le_bytes().to_vec();
        let t = parse(&image(2, "{'descr': '<i8', 'fortran_order': False, 'shape': (), }\n", &ids)).unwrap();
        assert_eq!(t, Tensor::ids(vec![], vec![42]));
        let t = parse(&image(3, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n", &f32_bytes(&[1.5, -2.0]))).unwrap();
        assert_eq!(t, Tensor::f32(vec![2], vec![1.5, -2.0]));
    }

    #[test]
    fn round_trips_what_it_writes() {
        for t in [
            Tensor::f32(vec![2, 3], vec![1.0, f32::NAN, f32::INFINITY, -0.0, 1e-30, 3.5]),
            Tensor::ids(vec![4], vec![1, -1, i64::MAX, 0]),
            Tensor::ids(vec![], vec![9]),
            Tensor::f32(vec![0, 5], vec![]),
        ] {
            let bytes = encode(&t);
            assert_eq!((bytes.len() - t.len() * if t.is_ids() { 8 } else { 4 }) % 64, 0, "header padded to 64");
            let back = parse(&bytes).unwrap();
            assert_eq!(back.shape, t.shape);
            match (&back.values, &t.values) {
                (Values::F32(a), Values::F32(b)) => assert!(a.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits())),
                (a, b) => assert_eq!(a, b),
            }
        }
    }

    #[test]
    fn refuses_object_big_endian_and_other_dtypes() {
        for descr in ["|O", "O", "<O", ">f4", ">i8", "<f8", "|u1", "<f2"] {
            let h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,), }}\n");
            assert!(matches!(parse(&image(1, &h, &[0; 8])), Err(Problem::Dtype(d)) if d == descr), "{descr}");
        }
        // A structured dtype (a list) is not a quoted string either.
        let h = "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }\n";
        assert!(matches!(parse(&image(1, h, &[0; 4])), Err(Problem::Dtype(_))));
    }

    #[test]
    fn refuses_fortran_order() {
        let h = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }\n";
        assert!(matches!(parse(&image(1, h, &[0; 16])), Err(Problem::FortranOrder)));
    }

    #[test]
    fn refuses_a_header_over_64_kib_before_reading_it() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[2, 0]);
        bytes.extend_from_slice(&(70_000u32).to_le_bytes());
        assert!(matches!(parse(&bytes), Err(Problem::HeaderTooLarge(70_000))));
    }

    #[test]
    fn refuses_a_shape_whose_element_count_overflows() {
        let h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}\n", usize::MAX / 2, 3);
        assert!(matches!(parse(&image(1, &h, &[])), Err(Problem::ShapeOverflow(_))));
        // Fits in elements but not in bytes.
        let h = format!("{{'descr': '<i8', 'fortran_order': False, 'shape': ({},), }}\n", usize::MAX / 4);
        assert!(matches!(parse(&image(1, &h, &[])), Err(Problem::ShapeOverflow(_))));
    }

    #[test]
    fn refuses_data_shorter_or_longer_than_the_shape() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000,), }\n";
        assert!(matches!(parse(&image(1, h, &[0; 8])), Err(Problem::DataLength { expected: 4_000_000_000, actual: 8, .. })));
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n";
        assert!(matches!(parse(&image(1, h, &[0; 8])), Err(Problem::DataLength { expected: 4, actual: 8, .. })));
    }

    #[test]
    fn refuses_bad_magic_versions_and_truncation() {
        assert!(matches!(parse(b"PK\x03\x04 not npy at all"), Err(Problem::NotNpy)));
        let mut v = image(1, "{}", &[]);
        v[6] = 4;
        assert!(matches!(parse(&v), Err(Problem::Version(4, 0))));
        let mut v = image(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n", &[]);
        v.truncate(20);
        assert!(matches!(parse(&v), Err(Problem::TruncatedHeader)));
    }

    #[test]
    fn refuses_unknown_keys_and_missing_keys() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'evil': 1}\n";
        assert!(matches!(parse(&image(1, h, &[0; 4])), Err(Problem::Header(_))));
        let h = "{'descr': '<f4', 'shape': (1,), }\n";
        assert!(matches!(parse(&image(1, h, &[0; 4])), Err(Problem::Header(_))));
    }

    #[test]
    fn a_file_reads_the_same_values_as_its_image_whatever_the_padding() {
        let dir = scratch("pad");
        let values = vec![1.5f32, -0.0, f32::MIN_POSITIVE, 3e38, f32::NAN, -7.25];
        // Headers padded so the data starts at every offset modulo 8, and a version 2 header;
        // then headers ending just before, at and after the first read, and a long one.
        let around_first_read = [FIRST_READ - 80, FIRST_READ - 70, FIRST_READ - 69, FIRST_READ - 60, 5000];
        for pad in (0..8).chain(around_first_read) {
            let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }".to_string();
            header.push_str(&" ".repeat(pad));
            header.push('\n');
            for major in [1, 2] {
                let bytes = image(major, &header, &f32_bytes(&values));
                let path = dir.join(format!("pad{pad}-v{major}.npy"));
                std::fs::write(&path, &bytes).unwrap();
                let t = read(&path).unwrap();
                let Values::F32(got) = &t.values else { panic!("f32 expected") };
                let Values::F32(parsed) = parse(&bytes).unwrap().values else { panic!("f32 expected") };
                for side in [got, &parsed] {
                    assert!(side.len() == 6 && side.iter().zip(&values).all(|(a, b)| a.to_bits() == b.to_bits()), "pad {pad} v{major}: {side:?}");
                }
                assert_eq!(t.shape, vec![2, 3]);
            }
        }
        let ids = Tensor::ids(vec![3], vec![-1, 0, i64::MAX]);
        let path = dir.join("ids.npy");
        write(&path, &ids).unwrap();
        assert_eq!(read(&path).unwrap(), ids);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_with_less_data_than_its_header_says_is_refused_on_read() {
        let dir = scratch("short");
        let path = dir.join("short.npy");
        let mut bytes = encode(&Tensor::f32(vec![4], vec![1.0; 4]));
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&path, &bytes).unwrap();
        let e = read(&path).unwrap_err();
        assert!(matches!(e.problem, Problem::DataLength { expected: 16, actual: 15, .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reading_a_file_names_it_in_the_error() {
        let dir = scratch("read");
        let good = dir.join("good.npy");
        write(&good, &Tensor::f32(vec![2], vec![1.0, 2.0])).unwrap();
        assert_eq!(read(&good).unwrap(), Tensor::f32(vec![2], vec![1.0, 2.0]));
        let empty = dir.join("empty.npy");
        std::fs::write(&empty, b"").unwrap();
        let e = read(&empty).unwrap_err();
        assert!(matches!(e.problem, Problem::NotNpy));
        assert!(e.to_string().contains("empty.npy"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

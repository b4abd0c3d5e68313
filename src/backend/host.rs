//! Operands on the host, through a backend's `read` / `write`: how an op runs on the host with
//! its reference definition when a backend does not compute it itself (`Backend::sample`'s
//! default, `sample_on_host`). A new op can start that way: its trait method's default body
//! reads the operands here, calls its `harness` reference function and writes the result, so
//! every backend has it (the CPU backend included) until one overrides it with a kernel.

use super::{Backend, TRef};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Bytes of the tensor's elements, row by row (one read when the rows are packed).
fn read_bytes<B: Backend + ?Sized>(be: &mut B, t: &TRef) -> Result<Vec<u8>> {
    let row = t.dtype.bytes_for(t.shape.row_len());
    let rows = t.shape.rows();
    let mut out = vec![0u8; row * rows];
    if t.is_contiguous() {
        be.read(t.buf, t.offset, &mut out)?;
    } else {
        let stride = t.dtype.bytes_for(t.row_stride);
        for (r, chunk) in out.chunks_exact_mut(row.max(1)).enumerate() {
            be.read(t.buf, t.offset + r * stride, chunk)?;
        }
    }
    Ok(out)
}

/// A float tensor's elements as f32, row-major.
pub fn read_f32<B: Backend + ?Sized>(be: &mut B, t: &TRef) -> Result<Vec<f32>> {
    let raw = read_bytes(be, t)?;
    Ok(match t.dtype {
        DType::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::BF16 => raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::F16 => raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        dt => {
            return Err(Error::Other(format!(
                "host: {dt} tensor {:?} is not a float type",
                t.shape
            )))
        }
    })
}

/// An I32 tensor's elements, row-major.
pub fn read_i32<B: Backend + ?Sized>(be: &mut B, t: &TRef) -> Result<Vec<i32>> {
    if t.dtype != DType::I32 {
        return Err(Error::Other(format!(
            "host: {} tensor {:?} is not i32",
            t.dtype, t.shape
        )));
    }
    Ok(read_bytes(be, t)?
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Writes row-major `vals` into a float tensor, rounded (to nearest even) to its type.
pub fn write_f32<B: Backend + ?Sized>(be: &mut B, t: &TRef, vals: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = match t.dtype {
        DType::F32 => bytemuck::cast_slice(vals).to_vec(),
        DType::BF16 => vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        DType::F16 => vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        dt => {
            return Err(Error::Other(format!(
                "host: {dt} tensor {:?} is not a float type",
                t.shape
            )))
        }
    };
    write_bytes(be, t, &bytes)
}

/// Writes row-major `vals` into an I32 tensor.
pub fn write_i32<B: Backend + ?Sized>(be: &mut B, t: &TRef, vals: &[i32]) -> Result<()> {
    if t.dtype != DType::I32 {
        return Err(Error::Other(format!(
            "host: {} tensor {:?} is not i32",
            t.dtype, t.shape
        )));
    }
    write_bytes(be, t, bytemuck::cast_slice(vals))
}

fn write_bytes<B: Backend + ?Sized>(be: &mut B, t: &TRef, bytes: &[u8]) -> Result<()> {
    let row = t.dtype.bytes_for(t.shape.row_len());
    if bytes.len() != row * t.shape.rows() {
        return Err(Error::Other(format!(
            "host: {} bytes for a {} tensor {:?}",
            bytes.len(),
            t.dtype,
            t.shape
        )));
    }
    if t.is_contiguous() {
        return be.write(t.buf, t.offset, bytes);
    }
    let stride = t.dtype.bytes_for(t.row_stride);
    for (r, chunk) in bytes.chunks_exact(row.max(1)).enumerate() {
        be.write(t.buf, t.offset + r * stride, chunk)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{open, Device};
    use crate::tensor::Shape;

    /// A column block of a wider buffer round-trips through every float type, and the
    /// columns beside it stay untouched.
    #[test]
    fn strided_rows_round_trip() {
        let mut be = open(Device::Cpu).unwrap();
        let be = be.as_mut();
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let buf = be.alloc(dt.bytes_for(3 * 5)).unwrap();
            let wide = TRef::new(buf, 0, dt, Shape::new(&[3, 5]));
            write_f32(be, &wide, &[7.0; 15]).unwrap();
            let block = TRef {
                offset: dt.bytes_for(1),
                shape: Shape::new(&[3, 2]),
                ..wide
            };
            // 1/3 is not representable in bf16/f16: the write rounds it.
            let vals = [0.5, -1.0, 2.0, 1.0 / 3.0, 8.0, -0.25];
            write_f32(be, &block, &vals).unwrap();
            let back = read_f32(be, &block).unwrap();
            let third = match dt {
                DType::BF16 => half::bf16::from_f32(1.0 / 3.0).to_f32(),
                DType::F16 => half::f16::from_f32(1.0 / 3.0).to_f32(),
                _ => 1.0 / 3.0,
            };
            assert_eq!(back, [0.5, -1.0, 2.0, third, 8.0, -0.25], "{dt}");
            let all = read_f32(be, &wide).unwrap();
            let want = [
                7.0, 0.5, -1.0, 7.0, 7.0, 7.0, 2.0, third, 7.0, 7.0, 7.0, 8.0, -0.25, 7.0, 7.0,
            ];
            assert_eq!(all, want, "{dt}");
        }
        let ib = be.alloc(16).unwrap();
        let it = TRef::new(ib, 0, DType::I32, Shape::new(&[4]));
        write_i32(be, &it, &[3, -1, 7, 0]).unwrap();
        assert_eq!(read_i32(be, &it).unwrap(), [3, -1, 7, 0]);
        assert!(read_f32(be, &it)
            .unwrap_err()
            .to_string()
            .contains("not a float"));
        assert!(write_i32(be, &it, &[1]).is_err());
    }
}

//! Linux system calls that neither `rustix` nor the standard library wrap.
//!
//! Every other crate of the workspace forbids `unsafe`; this one allows it
//! on exactly one line per call, passing only integers and a descriptor
//! borrowed for the call, so no memory is shared with the kernel.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// Writes the dirty pages of `file` in `offset..offset + len` to the disk
/// and waits until they are written, without the disk cache flush and the
/// metadata write of `fsync` (`sync_file_range` with
/// `WAIT_BEFORE | WRITE | WAIT_AFTER`). This makes nothing durable: it
/// moves the writing of those pages earlier, so that a later `fsync` has
/// less left to do.
pub fn write_back_range(file: &impl AsFd, offset: u64, len: u64) -> io::Result<()> {
    let fd = file.as_fd().as_raw_fd();
    let offset = i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let len = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: `fd` is open for the whole call (borrowed from `file`), and
    // every other argument is an integer; the kernel reads no memory of
    // ours and writes none.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::sync_file_range(fd, offset, len, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The call's effect (pages written earlier) shows only in timing,
    /// which the benchmark measures; here: it accepts a file's range,
    /// written or not, and turns what the kernel refuses into errors.
    #[test]
    fn a_file_range_is_written_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = std::fs::File::create(dir.path().join("t")).unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        write_back_range(&f, 0, 1 << 20).unwrap();
        write_back_range(&f, 1 << 19, 4096).unwrap();
        // Past the end: nothing to write, not an error.
        write_back_range(&f, 1 << 30, 1 << 20).unwrap();
    }

    #[test]
    fn what_the_kernel_refuses_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("t")).unwrap();
        assert!(write_back_range(&f, u64::MAX, 1).is_err());
        assert!(write_back_range(&f, 0, u64::MAX).is_err());
        let (reader, _writer) = std::io::pipe().unwrap();
        let e = write_back_range(&reader, 0, 1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESPIPE), "{e}");
    }
}

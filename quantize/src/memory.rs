//! Keeping the resident set small while streaming a checkpoint: the input is memory-mapped, and
//! every page touched in a map stays in this process's RSS until unmapped, so a 15 GB
//! checkpoint would otherwise end with ~15 GB resident. After a piece is converted its pages are
//! dropped with madvise(MADV_DONTNEED), which for a file-backed mapping only unmaps them (the
//! data stays in the file and the page cache). Anonymous memory (a tensor the store had to copy
//! for alignment) would be zeroed by the same call, so only ranges inside a file mapping of a
//! `*.safetensors` file, as listed in /proc/self/maps, are released.

/// Address ranges of this process's file mappings of safetensors files.
pub struct FileMaps {
    ranges: Vec<(usize, usize)>,
    page: usize,
}

impl FileMaps {
    /// Reads /proc/self/maps (empty where it does not exist: nothing is released).
    pub fn current() -> FileMaps {
        let mut ranges = Vec::new();
        if let Ok(text) = std::fs::read_to_string("/proc/self/maps") {
            for line in text.lines() {
                // start-end perms offset dev inode path
                let mut f = line.split_whitespace();
                let (Some(span), Some(path)) = (f.next(), f.nth(4)) else {
                    continue;
                };
                if !path.ends_with(".safetensors") {
                    continue;
                }
                if let Some((a, b)) = span.split_once('-') {
                    if let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                    {
                        ranges.push((a, b));
                    }
                }
            }
        }
        FileMaps {
            ranges,
            page: page_size(),
        }
    }

    /// Drops the whole pages inside `bytes` from the resident set if they lie in a file mapping.
    pub fn release(&self, bytes: &[u8]) {
        let start = bytes.as_ptr() as usize;
        let end = start + bytes.len();
        if !self.ranges.iter().any(|&(a, b)| a <= start && end <= b) {
            return;
        }
        let (a, b) = (
            start.div_ceil(self.page) * self.page,
            end / self.page * self.page,
        );
        if b > a {
            advise_dontneed(a, b - a);
        }
    }
}

#[cfg(unix)]
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

#[cfg(not(unix))]
fn page_size() -> usize {
    4096
}

#[cfg(unix)]
fn advise_dontneed(addr: usize, len: usize) {
    // SAFETY: [addr, addr + len) is page-aligned and inside a read-only file mapping that stays
    // mapped (the checkpoint outlives the conversion); DONTNEED on such a mapping only drops the
    // page-table entries, and later reads fault the same file bytes back in. A failure is
    // harmless (the pages stay resident), so the result is ignored.
    unsafe {
        libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED);
    }
}

#[cfg(not(unix))]
fn advise_dontneed(_addr: usize, _len: usize) {}

/// Resident-set figures of this process in bytes, from /proc/self/status (Linux).
#[derive(Clone, Copy, Debug, Default)]
pub struct Rss {
    /// VmHWM: the peak resident set, file-backed pages included.
    pub peak: u64,
    /// RssAnon: anonymous memory resident now (heap, buffers).
    pub anon: u64,
}

pub fn rss() -> Option<Rss> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let v: u64 = line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(v * 1024)
    };
    Some(Rss {
        peak: kb("VmHWM:")?,
        anon: kb("RssAnon:")?,
    })
}

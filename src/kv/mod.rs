//! Paged KV cache: a page pool and per-sequence page tables in CSR form.
//!
//! The pool is one backend buffer of fixed-size pages ([`KvLayout`]); a sequence owns a list of
//! page ids, so nothing is copied as it grows. Kernels see a batch's pages in FlashInfer's CSR
//! form ([`PagedKv`]): `indices[indptr[b]..indptr[b+1]]` are sequence b's pages in token order
//! and `last_page_len[b]` counts the tokens on its last page, so
//! `kv_len = (pages - 1) * page_size + last_page_len` (0 when it has no pages).

use crate::backend::{Backend, BufId, KvLayout, PagedKv, TRef};
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape};

/// Tokens per page: `EngineOptions::page_size`'s default (the kernels are tuned for 16).
pub const DEFAULT_PAGE_SIZE: usize = 16;

/// Pages needed to hold `ctx_tokens` tokens.
pub fn pages_for_ctx(ctx_tokens: usize, page_size: usize) -> usize {
    if page_size == 0 {
        return 0;
    }
    ctx_tokens.div_ceil(page_size)
}

/// A fixed set of pages with a free list.
#[derive(Debug, Clone)]
pub struct PagePool {
    page_size: usize,
    n_pages: usize,
    /// A stack: the next page handed out is the last element. Kept so that a fresh pool (or a
    /// single sequence released and regrown) hands pages out as 0, 1, 2, ..., which keeps the
    /// device page table unchanged across prompts.
    free: Vec<u32>,
    in_use: Vec<bool>,
}

impl PagePool {
    pub fn new(n_pages: usize, page_size: usize) -> Result<PagePool> {
        if page_size == 0 {
            return Err(Error::Cache("page size must be at least 1 token".into()));
        }
        if n_pages == 0 {
            return Err(Error::Cache("the page pool needs at least one page".into()));
        }
        // Page ids travel to the kernels as i32.
        if n_pages > i32::MAX as usize
            || n_pages
                .checked_mul(page_size)
                .is_none_or(|t| t > i32::MAX as usize)
        {
            return Err(Error::Cache(format!(
                "{n_pages} pages of {page_size} tokens exceed the i32 range of the page table"
            )));
        }
        Ok(PagePool {
            page_size,
            n_pages,
            free: (0..n_pages as u32).rev().collect(),
            in_use: vec![false; n_pages],
        })
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    pub fn n_pages(&self) -> usize {
        self.n_pages
    }

    pub fn n_free(&self) -> usize {
        self.free.len()
    }

    /// Tokens the whole pool holds.
    pub fn capacity_tokens(&self) -> usize {
        self.n_pages * self.page_size
    }

    /// A free page, or `None` when the pool is exhausted.
    pub fn alloc_page(&mut self) -> Option<u32> {
        let p = self.free.pop()?;
        self.in_use[p as usize] = true;
        Some(p)
    }

    /// Returns a page to the pool; freeing an unknown or already free page is an error.
    pub fn free_page(&mut self, page: u32) -> Result<()> {
        match self.in_use.get_mut(page as usize) {
            None => Err(Error::Cache(format!(
                "page {page} does not exist (pool of {})",
                self.n_pages
            ))),
            Some(false) => Err(Error::Cache(format!("page {page} freed twice"))),
            Some(used) => {
                *used = false;
                self.free.push(page);
                Ok(())
            }
        }
    }
}

/// One sequence's pages (in token order) and token count.
#[derive(Debug, Clone, Default)]
pub struct SeqPages {
    pages: Vec<u32>,
    len: usize,
}

impl SeqPages {
    pub fn new() -> SeqPages {
        SeqPages::default()
    }

    /// Tokens stored (or being stored) in the cache for this sequence.
    pub fn kv_len(&self) -> usize {
        self.len
    }

    /// Pages owned, including any reserved beyond `kv_len`.
    pub fn pages(&self) -> &[u32] {
        &self.pages
    }

    /// Pages that hold tokens: the ones the page table lists.
    pub fn used_pages(&self, page_size: usize) -> &[u32] {
        &self.pages[..pages_for_ctx(self.len, page_size)]
    }

    /// Grows the page list so that `kv_len + new_tokens` tokens fit. `kv_len` is unchanged
    /// (see [`SeqPages::grow`]). On error nothing is allocated.
    pub fn reserve(&mut self, pool: &mut PagePool, new_tokens: usize) -> Result<()> {
        let ps = pool.page_size();
        let available = (self.pages.len() + pool.n_free()) * ps;
        let need = self
            .len
            .checked_add(new_tokens)
            .filter(|&n| n <= available)
            .ok_or_else(|| {
                Error::Cache(format!(
                    "the sequence needs {} tokens but the cache holds {available} (raise --ctx)",
                    self.len as u128 + new_tokens as u128
                ))
            })?;
        while self.pages.len() * ps < need {
            // Cannot fail: the check above counted the free pages.
            let p = pool
                .alloc_page()
                .ok_or_else(|| Error::Cache("page pool exhausted".into()))?;
            self.pages.push(p);
        }
        Ok(())
    }

    /// Reserves room for `new_tokens` more tokens and counts them as stored.
    pub fn grow(&mut self, pool: &mut PagePool, new_tokens: usize) -> Result<()> {
        self.reserve(pool, new_tokens)?;
        self.len += new_tokens;
        Ok(())
    }

    /// Drops tokens past `len` (e.g. to roll back a failed step) and frees the pages that no
    /// longer hold any token.
    pub fn truncate(&mut self, pool: &mut PagePool, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::Cache(format!(
                "cannot truncate a sequence of {} tokens to {len}",
                self.len
            )));
        }
        self.len = len;
        let keep = pages_for_ctx(len, pool.page_size());
        while self.pages.len() > keep {
            let p = self.pages.pop().expect("len > keep >= 0");
            pool.free_page(p)?;
        }
        Ok(())
    }

    /// Returns every page to the pool.
    pub fn release(&mut self, pool: &mut PagePool) -> Result<()> {
        self.truncate(pool, 0)
    }
}

/// A batch's page tables in FlashInfer CSR form (host side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageTable {
    pub page_size: usize,
    pub indptr: Vec<i32>,
    pub indices: Vec<i32>,
    pub last_page_len: Vec<i32>,
}

impl PageTable {
    /// The table of `seqs`, listing only pages that hold tokens.
    pub fn from_seqs(seqs: &[&SeqPages], page_size: usize) -> PageTable {
        let mut t = PageTable {
            page_size,
            indptr: vec![0],
            indices: Vec::new(),
            last_page_len: Vec::with_capacity(seqs.len()),
        };
        for s in seqs {
            let used = s.used_pages(page_size);
            t.indices.extend(used.iter().map(|&p| p as i32));
            t.indptr.push(t.indices.len() as i32);
            let last = if used.is_empty() {
                0
            } else {
                s.kv_len() - (used.len() - 1) * page_size
            };
            t.last_page_len.push(last as i32);
        }
        t
    }

    pub fn n_seqs(&self) -> usize {
        self.last_page_len.len()
    }

    /// Tokens of sequence `b`: `(pages - 1) * page_size + last_page_len`, or 0 without pages.
    pub fn kv_len(&self, b: usize) -> usize {
        let pages = (self.indptr[b + 1] - self.indptr[b]) as usize;
        if pages == 0 {
            0
        } else {
            (pages - 1) * self.page_size + self.last_page_len[b] as usize
        }
    }
}

/// Shape of the cache: what one token stores per layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvSpec {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Element type of K and V in the pool (an activation type).
    pub dtype: DType,
}

/// The KV cache of one sequence: the page pool, its pages, the pool buffer and the three CSR
/// device arrays that kernels read.
#[derive(Debug)]
pub struct KvCache {
    pool: PagePool,
    seq: SeqPages,
    layout: KvLayout,
    indptr: BufId,
    indices: BufId,
    last_page_len: BufId,
    /// Leading entries of the device `indices` array known to match `seq`'s pages.
    synced_indices: usize,
}

impl KvCache {
    /// Allocates a pool of `pages_for_ctx(ctx_tokens, page_size)` pages and the CSR buffers
    /// (indices sized for every page, so their addresses never change).
    pub fn new(
        be: &mut dyn Backend,
        spec: KvSpec,
        ctx_tokens: usize,
        page_size: usize,
    ) -> Result<KvCache> {
        // EngineOptions::validate reports this to users; here it guards direct callers.
        if ctx_tokens == 0 {
            return Err(Error::Cache("the capacity must be at least 1 token".into()));
        }
        if !spec.dtype.is_float() {
            return Err(Error::Cache(format!(
                "KV entries must be f32, f16 or bf16, not {}",
                spec.dtype
            )));
        }
        if spec.n_layers == 0 || spec.n_kv_heads == 0 || spec.head_dim == 0 {
            return Err(Error::Cache(format!(
                "invalid shape: {} layers, {} KV heads, head_dim {}",
                spec.n_layers, spec.n_kv_heads, spec.head_dim
            )));
        }
        let pool = PagePool::new(pages_for_ctx(ctx_tokens, page_size), page_size)?;
        let n_pages = pool.n_pages();
        let layout = KvLayout {
            buf: BufId(u32::MAX),
            dtype: spec.dtype,
            n_layers: spec.n_layers,
            n_pages,
            page_size,
            n_kv_heads: spec.n_kv_heads,
            head_dim: spec.head_dim,
        };
        let elems = [
            spec.n_layers,
            2,
            n_pages,
            page_size,
            spec.n_kv_heads,
            spec.head_dim,
        ]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n.checked_mul(spec.dtype.block_bytes()).is_some())
        .ok_or_else(|| {
            Error::Cache(format!(
                "a context of {ctx_tokens} tokens overflows the pool size"
            ))
        })?;
        let bytes = spec.dtype.bytes_for(elems);
        let buf = be.alloc(bytes).map_err(|e| {
            Error::Cache(format!(
                "cannot allocate {:.1} MiB for {ctx_tokens} tokens (lower --ctx): {e}",
                bytes as f64 / (1u64 << 20) as f64
            ))
        })?;
        let layout = KvLayout { buf, ..layout };
        let mut bufs = [BufId(0); 3];
        for (i, n) in [2, n_pages, 1].into_iter().enumerate() {
            match be.alloc(n * 4) {
                Ok(b) => bufs[i] = b,
                Err(e) => {
                    be.free(buf);
                    for b in &bufs[..i] {
                        be.free(*b);
                    }
                    return Err(e);
                }
            }
        }
        let [indptr, indices, last_page_len] = bufs;
        Ok(KvCache {
            pool,
            seq: SeqPages::new(),
            layout,
            indptr,
            indices,
            last_page_len,
            synced_indices: 0,
        })
    }

    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    pub fn page_size(&self) -> usize {
        self.layout.page_size
    }

    /// Tokens the cache can hold.
    pub fn capacity_tokens(&self) -> usize {
        self.pool.capacity_tokens()
    }

    /// Tokens stored so far (including those of the step begun last).
    pub fn kv_len(&self) -> usize {
        self.seq.kv_len()
    }

    pub fn seq(&self) -> &SeqPages {
        &self.seq
    }

    /// The host copy of the current page table.
    pub fn page_table(&self) -> PageTable {
        PageTable::from_seqs(&[&self.seq], self.layout.page_size)
    }

    /// The device view of the cache as of the last [`KvCache::begin`].
    pub fn paged(&self) -> PagedKv {
        PagedKv {
            layout: self.layout,
            indptr: TRef::new(self.indptr, 0, DType::I32, Shape::new(&[2])),
            indices: TRef::new(
                self.indices,
                0,
                DType::I32,
                Shape::new(&[self.layout.n_pages]),
            ),
            last_page_len: TRef::new(self.last_page_len, 0, DType::I32, Shape::new(&[1])),
        }
    }

    /// Starts a step that appends `new_tokens` tokens: reserves their pages, counts them in
    /// `kv_len`, and writes the grown page table to the device, so that `kv_append` finds their
    /// slots at the last `new_tokens` positions and attention covers them.
    pub fn begin(&mut self, be: &mut dyn Backend, new_tokens: usize) -> Result<PagedKv> {
        self.seq.grow(&mut self.pool, new_tokens)?;
        if let Err(e) = self.upload(be) {
            // Keep host and device in agreement: forget the step.
            let len = self.seq.kv_len() - new_tokens;
            self.seq.truncate(&mut self.pool, len)?;
            return Err(e);
        }
        Ok(self.paged())
    }

    /// Drops tokens past `len` (e.g. after a failed step) and updates the device table.
    pub fn truncate(&mut self, be: &mut dyn Backend, len: usize) -> Result<()> {
        self.seq.truncate(&mut self.pool, len)?;
        self.upload(be)
    }

    /// Empties the cache for a new prompt.
    pub fn reset(&mut self, be: &mut dyn Backend) -> Result<()> {
        self.truncate(be, 0)
    }

    /// Frees the backend buffers.
    pub fn free(self, be: &mut dyn Backend) {
        for b in [
            self.layout.buf,
            self.indptr,
            self.indices,
            self.last_page_len,
        ] {
            be.free(b);
        }
    }

    fn upload(&mut self, be: &mut dyn Backend) -> Result<()> {
        let t = self.page_table();
        let n = t.indices.len();
        // Pages already on the device keep their ids while a sequence grows, so only the new
        // tail of `indices` is written.
        self.synced_indices = self.synced_indices.min(n);
        let tail = &t.indices[self.synced_indices..];
        if !tail.is_empty() {
            be.write(
                self.indices,
                self.synced_indices * 4,
                bytemuck::cast_slice(tail),
            )?;
        }
        self.synced_indices = n;
        be.write(self.indptr, 0, bytemuck::cast_slice(&t.indptr))?;
        be.write(
            self.last_page_len,
            0,
            bytemuck::cast_slice(&t.last_page_len),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    fn read_i32(be: &mut CpuBackend, t: TRef) -> Vec<i32> {
        let mut b = vec![0u8; t.shape.numel() * 4];
        be.read(t.buf, t.offset, &mut b).unwrap();
        bytemuck::cast_slice(&b).to_vec()
    }

    fn spec() -> KvSpec {
        KvSpec {
            n_layers: 2,
            n_kv_heads: 2,
            head_dim: 8,
            dtype: DType::BF16,
        }
    }

    #[test]
    fn pages_for_ctx_rounds_up() {
        assert_eq!(pages_for_ctx(0, 16), 0);
        assert_eq!(pages_for_ctx(1, 16), 1);
        assert_eq!(pages_for_ctx(16, 16), 1);
        assert_eq!(pages_for_ctx(17, 16), 2);
        assert_eq!(pages_for_ctx(32768, 16), 2048);
    }

    #[test]
    fn pool_alloc_free_and_errors() {
        let mut pool = PagePool::new(3, 4).unwrap();
        assert_eq!(pool.capacity_tokens(), 12);
        assert_eq!(
            [pool.alloc_page(), pool.alloc_page(), pool.alloc_page()],
            [Some(0), Some(1), Some(2)]
        );
        assert_eq!(pool.alloc_page(), None);
        pool.free_page(1).unwrap();
        assert_eq!(pool.n_free(), 1);
        let e = pool.free_page(1).unwrap_err().to_string();
        assert!(e.contains("page 1 freed twice"), "{e}");
        let e = pool.free_page(7).unwrap_err().to_string();
        assert!(e.contains("page 7 does not exist"), "{e}");
        assert_eq!(pool.alloc_page(), Some(1));
        assert!(PagePool::new(4, 0).is_err());
        assert!(PagePool::new(0, 16).is_err());
    }

    #[test]
    fn growth_across_page_boundaries() {
        let mut pool = PagePool::new(8, 4).unwrap();
        let mut s = SeqPages::new();
        let mut expect_pages = 0;
        // One token at a time: a new page exactly when a page fills.
        for t in 1..=9 {
            s.grow(&mut pool, 1).unwrap();
            if (t - 1) % 4 == 0 {
                expect_pages += 1;
            }
            assert_eq!(s.pages().len(), expect_pages, "after {t} tokens");
            assert_eq!(s.kv_len(), t);
            let pt = PageTable::from_seqs(&[&s], 4);
            assert_eq!(pt.kv_len(0), t);
            assert_eq!(pt.last_page_len[0] as usize, (t - 1) % 4 + 1);
        }
        assert_eq!(s.pages(), &[0, 1, 2]);
        // A prefill chunk spanning several pages at once.
        s.grow(&mut pool, 10).unwrap();
        assert_eq!(s.kv_len(), 19);
        assert_eq!(s.pages().len(), 5);
        assert_eq!(pool.n_free(), 3);
        // reserve alone does not count tokens, and the table lists only pages holding tokens.
        s.reserve(&mut pool, 2).unwrap();
        assert_eq!((s.kv_len(), s.pages().len()), (19, 6));
        let pt = PageTable::from_seqs(&[&s], 4);
        assert_eq!(pt.indices, vec![0, 1, 2, 3, 4]);
        assert_eq!(pt.kv_len(0), 19);
    }

    #[test]
    fn exact_capacity_then_exhaustion() {
        let mut pool = PagePool::new(4, 16).unwrap();
        let mut s = SeqPages::new();
        s.grow(&mut pool, 64).unwrap();
        assert_eq!(pool.n_free(), 0);
        let pt = PageTable::from_seqs(&[&s], 16);
        assert_eq!((pt.kv_len(0), pt.last_page_len[0]), (64, 16));
        let e = s.grow(&mut pool, 1).unwrap_err();
        assert!(matches!(e, Error::Cache(_)));
        assert_eq!(
            e.to_string(),
            "KV cache: the sequence needs 65 tokens but the cache holds 64 (raise --ctx)"
        );
        // A failed reservation changes nothing.
        assert_eq!((s.kv_len(), s.pages().len()), (64, 4));

        let mut pool = PagePool::new(4, 16).unwrap();
        let mut s = SeqPages::new();
        s.grow(&mut pool, 10).unwrap();
        let e = s.reserve(&mut pool, 100).unwrap_err().to_string();
        assert!(e.contains("needs 110 tokens but the cache holds 64"), "{e}");
        assert_eq!((s.pages().len(), pool.n_free()), (1, 3));
        assert!(s.reserve(&mut pool, usize::MAX).is_err());
    }

    #[test]
    fn csr_for_a_batch() {
        let mut pool = PagePool::new(10, 4).unwrap();
        let (mut a, mut b, mut c) = (SeqPages::new(), SeqPages::new(), SeqPages::new());
        a.grow(&mut pool, 5).unwrap(); // pages 0, 1
        b.grow(&mut pool, 4).unwrap(); // page 2
        a.grow(&mut pool, 4).unwrap(); // page 3
        c.grow(&mut pool, 0).unwrap(); // nothing
        let pt = PageTable::from_seqs(&[&a, &b, &c], 4);
        assert_eq!(pt.indptr, vec![0, 3, 4, 4]);
        assert_eq!(pt.indices, vec![0, 1, 3, 2]);
        assert_eq!(pt.last_page_len, vec![1, 4, 0]);
        assert_eq!([pt.kv_len(0), pt.kv_len(1), pt.kv_len(2)], [9, 4, 0]);
        assert_eq!(pt.n_seqs(), 3);
        // Freed pages are reused by another sequence.
        a.release(&mut pool).unwrap();
        b.grow(&mut pool, 1).unwrap();
        assert_eq!(b.pages(), &[2, 0]);
        let pt = PageTable::from_seqs(&[&b], 4);
        assert_eq!(
            (pt.indices.clone(), pt.last_page_len.clone(), pt.kv_len(0)),
            (vec![2, 0], vec![1], 5)
        );
    }

    #[test]
    fn kv_len_formula() {
        let pt = PageTable {
            page_size: 16,
            indptr: vec![0, 0, 3],
            indices: vec![7, 8, 9],
            last_page_len: vec![0, 5],
        };
        assert_eq!(pt.kv_len(0), 0);
        assert_eq!(pt.kv_len(1), 2 * 16 + 5);
    }

    #[test]
    fn truncate_frees_trailing_pages() {
        let mut pool = PagePool::new(4, 4).unwrap();
        let mut s = SeqPages::new();
        s.grow(&mut pool, 13).unwrap();
        s.truncate(&mut pool, 5).unwrap();
        assert_eq!(
            (s.kv_len(), s.pages(), pool.n_free()),
            (5, &[0u32, 1][..], 2)
        );
        assert!(s.truncate(&mut pool, 6).is_err());
        s.release(&mut pool).unwrap();
        assert_eq!((s.kv_len(), s.pages().len(), pool.n_free()), (0, 0, 4));
    }

    #[test]
    fn cache_begin_writes_device_table() {
        let mut be = CpuBackend::new();
        let mut kv = KvCache::new(&mut be, spec(), 40, 16).unwrap();
        let l = kv.layout();
        assert_eq!((l.n_pages, l.page_size, kv.capacity_tokens()), (3, 16, 48));
        // The pool buffer is large enough for the layout's last element.
        let last = l.elem_index(1, 1, 2, 15, 1) + l.head_dim;
        let mut probe = vec![0u8; 2];
        be.read(l.buf, l.dtype.bytes_for(last) - 2, &mut probe)
            .unwrap();

        let p = kv.begin(&mut be, 20).unwrap();
        assert_eq!(kv.kv_len(), 20);
        assert_eq!(read_i32(&mut be, p.indptr), vec![0, 2]);
        assert_eq!(read_i32(&mut be, p.indices)[..2], [0, 1]);
        assert_eq!(read_i32(&mut be, p.last_page_len), vec![4]);
        assert_eq!(p.layout.buf, l.buf);

        // A decode step that fills page 1 exactly, then one that opens page 2.
        let p = kv.begin(&mut be, 12).unwrap();
        assert_eq!(read_i32(&mut be, p.indptr), vec![0, 2]);
        assert_eq!(read_i32(&mut be, p.last_page_len), vec![16]);
        let p = kv.begin(&mut be, 1).unwrap();
        assert_eq!(read_i32(&mut be, p.indptr), vec![0, 3]);
        assert_eq!(read_i32(&mut be, p.indices), vec![0, 1, 2]);
        assert_eq!(read_i32(&mut be, p.last_page_len), vec![1]);
        assert_eq!(kv.kv_len(), 33);

        let e = kv.begin(&mut be, 16).unwrap_err().to_string();
        assert_eq!(
            e,
            "KV cache: the sequence needs 49 tokens but the cache holds 48 (raise --ctx)"
        );
        assert_eq!(kv.kv_len(), 33);
        kv.begin(&mut be, 15).unwrap();
        assert_eq!(kv.kv_len(), 48);
    }

    #[test]
    fn cache_reset_frees_everything() {
        let mut be = CpuBackend::new();
        let mut kv = KvCache::new(&mut be, spec(), 64, 16).unwrap();
        kv.begin(&mut be, 50).unwrap();
        kv.reset(&mut be).unwrap();
        assert_eq!(kv.kv_len(), 0);
        assert_eq!(kv.seq().pages().len(), 0);
        assert_eq!(kv.pool.n_free(), 4);
        let p = kv.paged();
        assert_eq!(read_i32(&mut be, p.indptr), vec![0, 0]);
        assert_eq!(read_i32(&mut be, p.last_page_len), vec![0]);
        // The whole capacity is available again, with the same page ids as before.
        let p = kv.begin(&mut be, 64).unwrap();
        assert_eq!(read_i32(&mut be, p.indices), vec![0, 1, 2, 3]);
        assert_eq!(read_i32(&mut be, p.last_page_len), vec![16]);
        kv.free(&mut be);
    }

    #[test]
    fn cache_rejects_bad_parameters() {
        let mut be = CpuBackend::new();
        let e = KvCache::new(&mut be, spec(), 0, 16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 1 token"), "{e}");
        assert!(KvCache::new(&mut be, spec(), 64, 0).is_err());
        let bad = KvSpec {
            dtype: DType::Q8_0,
            ..spec()
        };
        assert!(KvCache::new(&mut be, bad, 64, 16)
            .unwrap_err()
            .to_string()
            .contains("q8_0"));
        let bad = KvSpec {
            head_dim: 0,
            ..spec()
        };
        assert!(KvCache::new(&mut be, bad, 64, 16).is_err());
        let huge = KvSpec {
            n_layers: usize::MAX / 4,
            ..spec()
        };
        assert!(KvCache::new(&mut be, huge, 1 << 20, 16).is_err());
    }
}

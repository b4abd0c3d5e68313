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

/// A fixed set of pages with a free list and a reference count per page: a page is free,
/// owned by one holder (a sequence, or the prefix cache), or shared by several. It returns to
/// the free list when its last holder lets go. Shared pages are read-only: a sequence that
/// must write into one copies it first (copy-on-write, see [`KvPool::begin_step`]).
#[derive(Debug, Clone)]
pub struct PagePool {
    page_size: usize,
    n_pages: usize,
    /// A stack: the next page handed out is the last element. Kept so that a fresh pool (or a
    /// single sequence released and regrown) hands pages out as 0, 1, 2, ..., which keeps the
    /// device page table unchanged across prompts.
    free: Vec<u32>,
    refs: Vec<u32>,
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
            refs: vec![0; n_pages],
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

    /// A free page (reference count 1), or `None` when the pool is exhausted.
    pub fn alloc_page(&mut self) -> Option<u32> {
        let p = self.free.pop()?;
        self.refs[p as usize] = 1;
        Some(p)
    }

    /// Holders of a page (0: free).
    pub fn refs(&self, page: u32) -> u32 {
        self.refs.get(page as usize).copied().unwrap_or(0)
    }

    /// One more holder of a page in use.
    pub fn retain(&mut self, page: u32) -> Result<()> {
        match self.refs.get_mut(page as usize) {
            None => Err(Error::Cache(format!(
                "page {page} does not exist (pool of {})",
                self.n_pages
            ))),
            Some(0) => Err(Error::Cache(format!(
                "page {page} is free, cannot share it"
            ))),
            Some(r) => {
                *r += 1;
                Ok(())
            }
        }
    }

    /// One holder lets go of a page; the last one returns it to the pool. Freeing an unknown
    /// or already free page is an error.
    pub fn free_page(&mut self, page: u32) -> Result<()> {
        match self.refs.get_mut(page as usize) {
            None => Err(Error::Cache(format!(
                "page {page} does not exist (pool of {})",
                self.n_pages
            ))),
            Some(0) => Err(Error::Cache(format!("page {page} freed twice"))),
            Some(r) => {
                *r -= 1;
                if *r == 0 {
                    self.free.push(page);
                }
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

    /// A sequence that starts with `tokens` tokens held in `pages` (another holder's, e.g. the
    /// prefix cache's): each page gains this sequence as a holder.
    pub fn shared(pool: &mut PagePool, pages: &[u32], tokens: usize) -> Result<SeqPages> {
        if pages_for_ctx(tokens, pool.page_size()) != pages.len() {
            return Err(Error::Cache(format!(
                "{tokens} tokens do not fill {} pages of {}",
                pages.len(),
                pool.page_size()
            )));
        }
        for (i, &p) in pages.iter().enumerate() {
            if let Err(e) = pool.retain(p) {
                for &q in &pages[..i] {
                    pool.free_page(q)?;
                }
                return Err(e);
            }
        }
        Ok(SeqPages {
            pages: pages.to_vec(),
            len: tokens,
        })
    }

    /// The page the next token goes into when it is a partly filled page that another holder
    /// shares (so it must be copied before the write): its index in `pages()`.
    pub fn shared_tail(&self, pool: &PagePool) -> Option<usize> {
        let ps = pool.page_size();
        let i = self.len / ps;
        (!self.len.is_multiple_of(ps) && pool.refs(self.pages[i]) > 1).then_some(i)
    }

    /// Pages a growth by `new_tokens` takes from the free list (a shared partial tail page
    /// counts: it is copied first).
    pub fn pages_needed(&self, pool: &PagePool, new_tokens: usize) -> usize {
        let have = self.pages.len();
        let want = pages_for_ctx(self.len + new_tokens, pool.page_size());
        let cow = (new_tokens > 0 && self.shared_tail(pool).is_some()) as usize;
        want.saturating_sub(have) + cow
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
    qo_indptr: BufId,
    indptr: BufId,
    indices: BufId,
    last_page_len: BufId,
    /// Leading entries of the device `indices` array known to match `seq`'s pages.
    synced_indices: usize,
    /// The step rows last written to `qo_indptr` ([0, rows]).
    qo_rows: Option<usize>,
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
        let mut bufs = [BufId(0); 4];
        for (i, n) in [2, n_pages, 1, 2].into_iter().enumerate() {
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
        let [indptr, indices, last_page_len, qo_indptr] = bufs;
        Ok(KvCache {
            pool,
            seq: SeqPages::new(),
            layout,
            qo_indptr,
            indptr,
            indices,
            last_page_len,
            synced_indices: 0,
            qo_rows: None,
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

    /// The device view of the cache as of the last [`KvCache::begin`] (one sequence whose last
    /// rows are that step's tokens).
    pub fn paged(&self) -> PagedKv {
        PagedKv {
            layout: self.layout,
            qo_indptr: TRef::new(self.qo_indptr, 0, DType::I32, Shape::new(&[2])),
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
        let qo = if self.qo_rows == Some(new_tokens) {
            Ok(())
        } else {
            self.qo_rows = None;
            be.write(
                self.qo_indptr,
                0,
                bytemuck::cast_slice(&[0i32, new_tokens as i32]),
            )
            .map(|_| self.qo_rows = Some(new_tokens))
        };
        if let Err(e) = qo.and_then(|_| self.upload(be)) {
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
            self.qo_indptr,
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

/// A sequence of a [`KvPool`].
pub type SeqId = u64;

/// The KV pool of many sequences: the page pool with reference counts, each sequence's pages,
/// and the step's CSR tables on the device (`qo_indptr`, `indptr`, `last_page_len` sized for
/// `max_batch` sequences at fixed addresses; `indices` sized for the pool and regrown, at a new
/// address, when shared pages make a step's page lists longer than the pool).
pub struct KvPool {
    pool: PagePool,
    layout: KvLayout,
    seqs: std::collections::HashMap<SeqId, SeqPages>,
    max_batch: usize,
    qo_indptr: BufId,
    indptr: BufId,
    last_page_len: BufId,
    indices: BufId,
    indices_cap: usize,
    /// A [n_layers * 2, page_elems] buffer for copy-on-write and its two index lists.
    cow: Option<(BufId, BufId, BufId)>,
    /// The host copy of the device tables, to write only what changed.
    shadow: [Vec<i32>; 4],
}

impl KvPool {
    /// A pool of `pages_for_ctx(ctx_tokens, page_size)` pages for up to `max_batch` sequences
    /// per step.
    pub fn new(
        be: &mut dyn Backend,
        spec: KvSpec,
        ctx_tokens: usize,
        page_size: usize,
        max_batch: usize,
    ) -> Result<KvPool> {
        if max_batch == 0 {
            return Err(Error::flag("--max-batch", "must be at least 1"));
        }
        // The pool buffer and its layout come from the single-sequence cache's checks.
        let kv = KvCache::new(be, spec, ctx_tokens, page_size)?;
        let layout = kv.layout;
        let pool = PagePool::new(layout.n_pages, page_size)?;
        for b in [kv.qo_indptr, kv.indptr, kv.indices, kv.last_page_len] {
            be.free(b);
        }
        let mut bufs = Vec::new();
        for n in [
            max_batch + 1,
            max_batch + 1,
            max_batch.max(1),
            layout.n_pages,
        ] {
            match be.alloc(n * 4) {
                Ok(b) => bufs.push(b),
                Err(e) => {
                    for b in bufs {
                        be.free(b);
                    }
                    be.free(layout.buf);
                    return Err(e);
                }
            }
        }
        Ok(KvPool {
            pool,
            layout,
            seqs: Default::default(),
            max_batch,
            qo_indptr: bufs[0],
            indptr: bufs[1],
            last_page_len: bufs[2],
            indices: bufs[3],
            indices_cap: layout.n_pages,
            cow: None,
            shadow: Default::default(),
        })
    }

    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    pub fn page_size(&self) -> usize {
        self.layout.page_size
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Tokens the whole pool holds.
    pub fn capacity_tokens(&self) -> usize {
        self.pool.capacity_tokens()
    }

    pub fn pages(&self) -> &PagePool {
        &self.pool
    }

    pub fn n_free(&self) -> usize {
        self.pool.n_free()
    }

    /// Starts a sequence, empty or holding `tokens` tokens in shared `pages` (a prefix-cache
    /// hit).
    pub fn add_seq(&mut self, id: SeqId, pages: &[u32], tokens: usize) -> Result<()> {
        if self.seqs.contains_key(&id) {
            return Err(Error::Cache(format!("sequence {id} exists already")));
        }
        let s = SeqPages::shared(&mut self.pool, pages, tokens)?;
        self.seqs.insert(id, s);
        Ok(())
    }

    pub fn seq(&self, id: SeqId) -> Option<&SeqPages> {
        self.seqs.get(&id)
    }

    /// Tokens stored for a sequence (0 for an unknown one).
    pub fn kv_len(&self, id: SeqId) -> usize {
        self.seqs.get(&id).map_or(0, |s| s.kv_len())
    }

    /// Pages growing `id` by `new_tokens` would take from the free list.
    pub fn pages_needed(&self, id: SeqId, new_tokens: usize) -> usize {
        match self.seqs.get(&id) {
            Some(s) => s.pages_needed(&self.pool, new_tokens),
            None => pages_for_ctx(new_tokens, self.page_size()),
        }
    }

    /// One more holder of a page (the prefix cache keeping a sequence's page).
    pub fn retain_page(&mut self, page: u32) -> Result<()> {
        self.pool.retain(page)
    }

    /// A holder lets go of a page.
    pub fn release_page(&mut self, page: u32) -> Result<()> {
        self.pool.free_page(page)
    }

    /// Ends a sequence: its pages lose it as a holder (pages nobody else holds are free).
    pub fn remove_seq(&mut self, id: SeqId) -> Result<()> {
        if let Some(mut s) = self.seqs.remove(&id) {
            s.release(&mut self.pool)?;
        }
        Ok(())
    }

    /// Drops a sequence's tokens past `len` (a step rolled back, a look-ahead row discarded).
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        match self.seqs.get_mut(&id) {
            Some(s) => s.truncate(&mut self.pool, len),
            None => Err(Error::Cache(format!("no sequence {id}"))),
        }
    }

    /// Starts a step in which each listed sequence appends its `new_tokens` rows (in this order:
    /// rows of q / k / v follow the list): reserves their pages (copying a shared partial tail
    /// page first), counts the tokens, and writes the CSR tables for exactly these sequences.
    /// On error nothing changes.
    pub fn begin_step(&mut self, be: &mut dyn Backend, step: &[(SeqId, usize)]) -> Result<PagedKv> {
        if step.is_empty() || step.len() > self.max_batch {
            return Err(Error::Cache(format!(
                "a step of {} sequences (1 to --max-batch {} supported)",
                step.len(),
                self.max_batch
            )));
        }
        let need: usize = step.iter().map(|&(id, n)| self.pages_needed(id, n)).sum();
        if need > self.pool.n_free() {
            return Err(Error::Cache(format!(
                "the step needs {need} free pages but the pool has {}",
                self.pool.n_free()
            )));
        }
        let mut done: Vec<(SeqId, usize)> = Vec::new();
        let res = (|| {
            for &(id, n) in step {
                let s = self
                    .seqs
                    .get(&id)
                    .ok_or_else(|| Error::Cache(format!("no sequence {id}")))?;
                let old = s.kv_len();
                if n > 0 {
                    if let Some(i) = s.shared_tail(&self.pool) {
                        self.copy_on_write(be, id, i)?;
                    }
                }
                self.seqs
                    .get_mut(&id)
                    .expect("checked above")
                    .grow(&mut self.pool, n)?;
                done.push((id, old));
            }
            self.upload(be, step)
        })();
        match res {
            Ok(kv) => Ok(kv),
            Err(e) => {
                for (id, old) in done {
                    let _ = self.truncate(id, old);
                }
                Err(e)
            }
        }
    }

    /// Gives sequence `id` a private copy of its page `i` (all layers, K and V).
    fn copy_on_write(&mut self, be: &mut dyn Backend, id: SeqId, i: usize) -> Result<()> {
        let l = self.layout;
        let src = self.seqs[&id].pages()[i];
        let dst = self
            .pool
            .alloc_page()
            .ok_or_else(|| Error::Cache("page pool exhausted".into()))?;
        let rows = l.n_layers * 2;
        let res = (|| {
            if self.cow.is_none() {
                let tmp = be.alloc(l.dtype.bytes_for(rows * l.page_elems()))?;
                let a = be.alloc(rows * 4)?;
                let b = be.alloc(rows * 4)?;
                self.cow = Some((tmp, a, b));
            }
            let (tmp, a, b) = self.cow.expect("allocated above");
            let idx = |p: u32| -> Vec<i32> {
                (0..rows)
                    .map(|r| (r * l.n_pages + p as usize) as i32)
                    .collect()
            };
            be.write(a, 0, bytemuck::cast_slice(&idx(src)))?;
            be.write(b, 0, bytemuck::cast_slice(&idx(dst)))?;
            let pool_rows = TRef::new(
                l.buf,
                0,
                l.dtype,
                Shape::new(&[rows * l.n_pages, l.page_elems()]),
            );
            let tmp_t = TRef::new(tmp, 0, l.dtype, Shape::new(&[rows, l.page_elems()]));
            let i32s = |buf: BufId| TRef::new(buf, 0, DType::I32, Shape::new(&[rows]));
            be.gather_rows(pool_rows, i32s(a), tmp_t)?;
            be.scatter_rows(tmp_t, i32s(b), pool_rows)
        })();
        if let Err(e) = res {
            self.pool.free_page(dst)?;
            return Err(e);
        }
        let s = self.seqs.get_mut(&id).expect("caller checked");
        s.pages[i] = dst;
        self.pool.free_page(src)
    }

    fn upload(&mut self, be: &mut dyn Backend, step: &[(SeqId, usize)]) -> Result<PagedKv> {
        let ps = self.page_size();
        let seqs: Vec<&SeqPages> = step.iter().map(|(id, _)| &self.seqs[id]).collect();
        let t = PageTable::from_seqs(&seqs, ps);
        let mut qo = vec![0i32];
        for &(_, n) in step {
            qo.push(qo.last().expect("non-empty") + n as i32);
        }
        if t.indices.len() > self.indices_cap {
            // Shared pages listed by several sequences: a longer table (new address).
            let cap = t.indices.len().next_power_of_two();
            let nb = be.alloc(cap * 4)?;
            be.free(self.indices);
            self.indices = nb;
            self.indices_cap = cap;
            self.shadow[2].clear();
        }
        let tables = [
            (self.qo_indptr, qo),
            (self.indptr, t.indptr),
            (self.indices, t.indices),
            (self.last_page_len, t.last_page_len),
        ];
        for (k, (buf, vals)) in tables.into_iter().enumerate() {
            // Only the entries that differ from what the device holds: decode steps change a
            // few (lengths, a new page).
            let sh = &mut self.shadow[k];
            let same = sh.iter().zip(&vals).take_while(|(a, b)| a == b).count();
            let last = if sh.len() == vals.len() {
                vals.iter()
                    .zip(sh.iter())
                    .rposition(|(a, b)| a != b)
                    .map_or(same, |p| p + 1)
            } else {
                vals.len()
            };
            if last > same {
                if let Err(e) = be.write(buf, same * 4, bytemuck::cast_slice(&vals[same..last])) {
                    sh.clear();
                    return Err(e);
                }
            }
            *sh = vals;
        }
        let b = step.len();
        let i32t = |buf: BufId, n: usize| TRef::new(buf, 0, DType::I32, Shape::new(&[n]));
        Ok(PagedKv {
            layout: self.layout,
            qo_indptr: i32t(self.qo_indptr, b + 1),
            indptr: i32t(self.indptr, b + 1),
            indices: i32t(self.indices, self.indices_cap),
            last_page_len: i32t(self.last_page_len, b),
        })
    }

    /// Bytes of the pool buffer (every page, used or not).
    pub fn pool_bytes(&self) -> usize {
        self.layout.total_bytes()
    }

    /// Frees the backend buffers.
    pub fn free(self, be: &mut dyn Backend) {
        for b in [
            self.layout.buf,
            self.qo_indptr,
            self.indptr,
            self.last_page_len,
            self.indices,
        ] {
            be.free(b);
        }
        if let Some((a, b, c)) = self.cow {
            for x in [a, b, c] {
                be.free(x);
            }
        }
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

    fn pool_spec() -> KvSpec {
        KvSpec {
            n_layers: 2,
            n_kv_heads: 1,
            head_dim: 2,
            dtype: DType::F32,
        }
    }

    /// Pages are freed only when their last holder lets go; sharing a free page is an error.
    #[test]
    fn refcounted_pages() {
        let mut pool = PagePool::new(3, 4).unwrap();
        let p = pool.alloc_page().unwrap();
        pool.retain(p).unwrap();
        assert_eq!(pool.refs(p), 2);
        pool.free_page(p).unwrap();
        assert_eq!((pool.refs(p), pool.n_free()), (1, 2));
        pool.free_page(p).unwrap();
        assert_eq!((pool.refs(p), pool.n_free()), (0, 3));
        assert!(pool.retain(p).unwrap_err().to_string().contains("free"));
        assert!(pool
            .retain(9)
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        // A sequence built on shared pages holds them; releasing it leaves the other holder's.
        let a = pool.alloc_page().unwrap();
        let b = pool.alloc_page().unwrap();
        let mut s = SeqPages::shared(&mut pool, &[a, b], 6).unwrap();
        assert_eq!((pool.refs(a), pool.refs(b)), (2, 2));
        assert_eq!(s.shared_tail(&pool), Some(1));
        // Growing by 3 copies the shared tail page and opens one more.
        assert_eq!(s.pages_needed(&pool, 3), 2);
        assert_eq!(s.pages_needed(&pool, 0), 0);
        s.release(&mut pool).unwrap();
        assert_eq!((pool.refs(a), pool.refs(b), pool.n_free()), (1, 1, 1));
        assert!(SeqPages::shared(&mut pool, &[a], 5).is_err());
    }

    fn pool_vals(be: &mut CpuBackend, kv: &KvPool) -> Vec<f32> {
        let mut b = vec![0u8; kv.layout().total_bytes()];
        be.read(kv.layout().buf, 0, &mut b).unwrap();
        bytemuck::cast_slice(&b).to_vec()
    }

    /// A step of several sequences writes their CSR tables in step order; a sequence that
    /// appends into a shared partial page gets its own copy first (all layers, K and V) and
    /// the other holder's page is untouched.
    #[test]
    fn pool_steps_and_copy_on_write() {
        let mut be = CpuBackend::new();
        let mut kv = KvPool::new(&mut be, pool_spec(), 32, 4, 4).unwrap();
        kv.add_seq(1, &[], 0).unwrap();
        kv.add_seq(2, &[], 0).unwrap();
        let p = kv.begin_step(&mut be, &[(1, 6), (2, 3)]).unwrap();
        assert_eq!(read_i32(&mut be, p.qo_indptr), vec![0, 6, 9]);
        assert_eq!(read_i32(&mut be, p.indptr), vec![0, 2, 3]);
        assert_eq!(read_i32(&mut be, p.indices)[..3], [0, 1, 2]);
        assert_eq!(read_i32(&mut be, p.last_page_len), vec![2, 3]);
        // Fill the pool with distinct values, then share sequence 1's pages with sequence 3.
        let l = kv.layout();
        let n = l.total_bytes() / 4;
        let vals: Vec<f32> = (0..n).map(|i| i as f32).collect();
        be.write(l.buf, 0, bytemuck::cast_slice(&vals)).unwrap();
        let pages = kv.seq(1).unwrap().pages().to_vec();
        kv.add_seq(3, &pages, 6).unwrap();
        assert_eq!(kv.pages().refs(pages[1]), 2);
        assert_eq!(kv.pages_needed(3, 1), 1);
        let p = kv.begin_step(&mut be, &[(3, 1), (1, 1)]).unwrap();
        let s3 = kv.seq(3).unwrap().pages().to_vec();
        assert_eq!(s3[0], pages[0]);
        assert_ne!(s3[1], pages[1]);
        assert_eq!(kv.pages().refs(pages[1]), 1);
        assert_eq!(read_i32(&mut be, p.qo_indptr), vec![0, 1, 2]);
        assert_eq!(read_i32(&mut be, p.indptr), vec![0, 2, 4]);
        assert_eq!(
            read_i32(&mut be, p.indices)[..4],
            [s3[0] as i32, s3[1] as i32, pages[0] as i32, pages[1] as i32]
        );
        assert_eq!(read_i32(&mut be, p.last_page_len), vec![3, 3]);
        // The copy holds the shared page's contents in every layer, K and V.
        let after = pool_vals(&mut be, &kv);
        for layer in 0..2 {
            for which in 0..2 {
                let src = l.elem_index(layer, which, pages[1] as usize, 0, 0);
                let dst = l.elem_index(layer, which, s3[1] as usize, 0, 0);
                let e = l.page_elems();
                assert_eq!(after[dst..dst + e], vals[src..src + e]);
                assert_eq!(after[src..src + e], vals[src..src + e]);
            }
        }
        // A step that does not fit changes nothing.
        let free = kv.n_free();
        let e = kv.begin_step(&mut be, &[(1, 4), (2, 100)]).unwrap_err();
        assert!(e.to_string().contains("free pages"), "{e}");
        assert_eq!((kv.kv_len(1), kv.kv_len(2), kv.n_free()), (7, 3, free));
        assert!(kv.begin_step(&mut be, &[(9, 1)]).is_err());
        assert!(kv
            .begin_step(&mut be, &[(1, 1); 5])
            .unwrap_err()
            .to_string()
            .contains("--max-batch"));
        // Ending sequences returns their pages.
        for id in [1, 2, 3] {
            kv.remove_seq(id).unwrap();
        }
        assert_eq!(kv.n_free(), 8);
        kv.free(&mut be);
    }
}

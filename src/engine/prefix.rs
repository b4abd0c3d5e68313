//! Shared-prefix reuse: the prefix cache (full KV pages keyed by everything that produced them)
//! and the vision-embedding cache (merged embeddings of recent media, under a byte budget).
//!
//! Page keys chain: page i of a sequence is keyed by `hash(key of page i - 1, content of its
//! tokens)`, where a text token's content is its id and a vision pad's is its media item's
//! content key and its index in the item. The key of a page thus covers every token before it
//! (and so its positions, which depend on nothing else), and two prompts share the KV of their
//! longest run of equal full pages. Media keys ([`media_key`]) hash the preprocessed pixels and
//! every parameter that changes what the tower sees.

use crate::backend::{Backend, TRef};
use crate::error::Result;
use crate::kv::KvPool;
use crate::model::inputs::VisionInput;
use std::collections::HashMap;

/// A 128-bit content hash (two independent 64-bit lanes of multiply-xorshift mixing over
/// 8-byte words). Not cryptographic: it tells apart the inputs one engine sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Key(pub u64, pub u64);

/// Streaming builder of a [`Key`].
#[derive(Clone, Debug)]
pub struct Hasher {
    a: u64,
    b: u64,
    n: u64,
}

const M1: u64 = 0x9e37_79b9_7f4a_7c15;
const M2: u64 = 0xc2b2_ae3d_27d4_eb4f;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher::new()
    }
}

impl Hasher {
    pub fn new() -> Hasher {
        Hasher {
            a: 0x243f_6a88_85a3_08d3,
            b: 0x1319_8a2e_0370_7344,
            n: 0,
        }
    }

    pub fn u64(&mut self, w: u64) -> &mut Self {
        self.a = mix(self.a ^ w.wrapping_mul(M1)).rotate_left(23);
        self.b = mix(self.b.wrapping_add(w) ^ M2).rotate_left(41) ^ self.a;
        self.n += 1;
        self
    }

    pub fn key(&mut self, k: Key) -> &mut Self {
        self.u64(k.0).u64(k.1)
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let mut c = b.chunks_exact(8);
        for w in &mut c {
            self.u64(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let mut last = [0u8; 8];
        last[..c.remainder().len()].copy_from_slice(c.remainder());
        self.u64(u64::from_le_bytes(last)).u64(b.len() as u64)
    }

    pub fn finish(&self) -> Key {
        Key(mix(self.a ^ self.n), mix(self.b.wrapping_add(self.n)))
    }
}

/// The content key of a preprocessed media item: its kind, grid, temporal step, frame size and
/// every patch value (what the vision tower reads).
pub fn media_key(v: &VisionInput) -> Key {
    let mut h = Hasher::new();
    h.u64(matches!(v.kind, crate::prompt::VisionKind::Video) as u64);
    for g in v.rows.grid_thw {
        h.u64(g as u64);
    }
    h.u64(v.second_per_grid_t.to_bits() as u64)
        .u64(v.tokens as u64);
    h.bytes(bytemuck::cast_slice(&v.rows.rows));
    h.finish()
}

/// The content of each prompt token for page keys: text tokens by id, vision pads by their
/// item's key and index (`pads`: the prompt rows of the vision pads, in item order, and each
/// item's key and token count).
pub fn token_contents(prompt: &[u32], pads: &[i32], items: &[(Key, usize)]) -> Vec<Key> {
    let mut c: Vec<Key> = prompt.iter().map(|&t| Key(t as u64, 0)).collect();
    let mut next = pads.iter();
    for (k, n) in items {
        for i in 0..*n {
            if let Some(&row) = next.next() {
                c[row as usize] = Hasher::new().key(*k).u64(i as u64).finish();
            }
        }
    }
    c
}

/// Keys of the full pages of a token sequence (contents as [`token_contents`] gives them).
pub fn page_keys(contents: &[Key], page_size: usize) -> Vec<Key> {
    let mut keys = Vec::with_capacity(contents.len() / page_size.max(1));
    let mut prev = Key(0x5eed, page_size as u64);
    for page in contents.chunks_exact(page_size.max(1)) {
        let mut h = Hasher::new();
        h.key(prev);
        for &c in page {
            h.key(c);
        }
        prev = h.finish();
        keys.push(prev);
    }
    keys
}

#[derive(Clone, Debug)]
struct PageEntry {
    page: u32,
    /// Pages before it in its chain (evicted first when equally old: the chain's tail goes
    /// before its head).
    depth: usize,
    last_used: u64,
}

/// Full KV pages by key; the cache holds one reference to each page it lists.
#[derive(Debug, Default)]
pub struct PrefixCache {
    map: HashMap<Key, PageEntry>,
    tick: u64,
    pub hits: u64,
    pub hit_tokens: u64,
}

impl PrefixCache {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The pages of the longest run of `keys` (from the first) the cache holds, marked used.
    pub fn lookup(&mut self, keys: &[Key]) -> Vec<u32> {
        self.tick += 1;
        let mut pages = Vec::new();
        for k in keys {
            match self.map.get_mut(k) {
                Some(e) => {
                    e.last_used = self.tick;
                    pages.push(e.page);
                }
                None => break,
            }
        }
        pages
    }

    /// Lists `pages[i]` under `keys[i]` where the key is new (the cache takes a reference).
    pub fn insert(&mut self, pool: &mut KvPool, keys: &[Key], pages: &[u32]) -> Result<()> {
        self.tick += 1;
        for (depth, (k, &p)) in keys.iter().zip(pages).enumerate() {
            if let Some(e) = self.map.get_mut(k) {
                e.last_used = self.tick;
                continue;
            }
            pool.retain_page(p)?;
            self.map.insert(
                *k,
                PageEntry {
                    page: p,
                    depth,
                    last_used: self.tick,
                },
            );
        }
        Ok(())
    }

    /// Pages only the cache holds (what eviction can free).
    pub fn evictable(&self, pool: &KvPool) -> usize {
        self.map
            .values()
            .filter(|e| pool.pages().refs(e.page) == 1)
            .count()
    }

    /// Frees least recently used pages that only the cache holds until the pool has `want`
    /// free pages (or nothing more can go). Returns the pages freed.
    pub fn evict(&mut self, pool: &mut KvPool, want: usize) -> Result<usize> {
        let mut freed = 0;
        if pool.n_free() >= want {
            return Ok(0);
        }
        let mut cands: Vec<(u64, std::cmp::Reverse<usize>, Key)> = self
            .map
            .iter()
            .filter(|(_, e)| pool.pages().refs(e.page) == 1)
            .map(|(k, e)| (e.last_used, std::cmp::Reverse(e.depth), *k))
            .collect();
        cands.sort();
        for (_, _, k) in cands {
            if pool.n_free() >= want {
                break;
            }
            let e = self.map.remove(&k).expect("listed above");
            pool.release_page(e.page)?;
            freed += 1;
        }
        Ok(freed)
    }

    /// Lets go of every page.
    pub fn clear(&mut self, pool: &mut KvPool) -> Result<()> {
        for (_, e) in self.map.drain() {
            pool.release_page(e.page)?;
        }
        Ok(())
    }
}

struct VisionEntry {
    t: TRef,
    bytes: usize,
    last_used: u64,
    /// Requests still to read it.
    pins: usize,
}

/// Merged vision embeddings by media key, least recently used dropped past the byte budget
/// (entries that a request still needs stay until it is done with them).
#[derive(Default)]
pub struct VisionCache {
    map: HashMap<Key, VisionEntry>,
    budget: usize,
    bytes: usize,
    tick: u64,
    pub hits: u64,
    /// Replaced entries still pinned by a request.
    orphans: Vec<TRef>,
}

impl VisionCache {
    pub fn new(budget_bytes: usize) -> VisionCache {
        VisionCache {
            budget: budget_bytes,
            ..VisionCache::default()
        }
    }

    pub fn contains(&self, k: &Key) -> bool {
        self.map.contains_key(k)
    }

    /// The embeddings of `k`, pinned until [`VisionCache::unpin`].
    pub fn pin(&mut self, k: &Key) -> Option<TRef> {
        self.tick += 1;
        let e = self.map.get_mut(k)?;
        e.pins += 1;
        e.last_used = self.tick;
        self.hits += 1;
        Some(e.t)
    }

    /// Adds embeddings the caller made (a buffer of their own), pinned once.
    pub fn insert_pinned(&mut self, be: &mut dyn Backend, k: Key, t: TRef) {
        self.tick += 1;
        let bytes = t.span_bytes();
        if let Some(old) = self.map.insert(
            k,
            VisionEntry {
                t,
                bytes,
                last_used: self.tick,
                pins: 1,
            },
        ) {
            // Two requests encoded the same media at once: keep the newer, free the older
            // when nobody reads it.
            self.bytes -= old.bytes;
            if old.pins == 0 {
                be.free(old.t.buf);
            } else {
                self.orphans.push(old.t);
            }
        }
        self.bytes += bytes;
    }

    /// A request is done with `k`'s embeddings; then trims the cache to its budget.
    pub fn unpin(&mut self, be: &mut dyn Backend, k: &Key, t: TRef) {
        match self.map.get_mut(k) {
            Some(e) if e.t == t => e.pins = e.pins.saturating_sub(1),
            _ => {
                if let Some(i) = self.orphans.iter().position(|o| *o == t) {
                    self.orphans.swap_remove(i);
                    be.free(t.buf);
                }
            }
        }
        self.trim(be);
    }

    fn trim(&mut self, be: &mut dyn Backend) {
        while self.bytes > self.budget {
            let victim = self
                .map
                .iter()
                .filter(|(_, e)| e.pins == 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k);
            let Some(k) = victim else { break };
            let e = self.map.remove(&k).expect("found above");
            self.bytes -= e.bytes;
            be.free(e.t.buf);
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frees every unpinned entry.
    pub fn clear(&mut self, be: &mut dyn Backend) {
        let budget = self.budget;
        self.budget = 0;
        self.trim(be);
        self.budget = budget;
    }
}

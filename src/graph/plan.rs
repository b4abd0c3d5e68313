//! The arena planner: every arena value gets an offset so that values alive at the same time
//! never overlap. Values are placed largest first at the lowest free offset among the values
//! whose lifetimes intersect theirs (greedy by size, a standard offline heuristic that stays
//! within a few percent of the peak live size for transformer graphs).

use super::{Graph, Source, ValueId};

/// Offsets are aligned for 16-byte vector loads and cp.async, with room for 128-byte lines.
const ALIGN: usize = 256;

#[derive(Clone, Debug)]
pub struct Plan {
    /// Byte offset in the arena of each value that owns arena memory (None for views and
    /// external values).
    pub offsets: Vec<Option<usize>>,
    pub arena_bytes: usize,
    /// Sum of the sizes of all arena values: what the arena would be without reuse.
    pub unshared_bytes: usize,
}

/// Lifetime of each root arena value as [first node that needs it, last node that reads it].
fn lifetimes(g: &Graph) -> Vec<Option<(usize, usize)>> {
    let end = g.nodes.len();
    let mut life: Vec<Option<(usize, usize)>> = vec![None; g.values.len()];
    for (i, v) in g.values.iter().enumerate() {
        match v.src {
            Source::Input => life[i] = Some((0, if v.keep { end } else { 0 })),
            Source::Arena if v.keep => life[i] = Some((usize::MAX, end)),
            _ => {}
        }
    }
    for (n, node) in g.nodes.iter().enumerate() {
        if let Some(out) = node.out {
            let l = life[out.0 as usize].get_or_insert((n, n));
            l.0 = l.0.min(n);
            l.1 = l.1.max(n);
        }
        for &input in &node.inputs {
            let r = g.root(input);
            if matches!(g.value(r).src, Source::Arena | Source::Input) {
                let l = life[r.0 as usize].get_or_insert((n, n));
                l.1 = l.1.max(n);
            }
        }
    }
    life
}

pub fn plan(g: &Graph) -> Plan {
    let life = lifetimes(g);
    let size = |v: usize| -> usize {
        let val = &g.values[v];
        let bytes = val
            .dtype
            .bytes_for(val.shape.rows().saturating_sub(1) * val.row_stride + val.shape.row_len());
        bytes.div_ceil(ALIGN) * ALIGN
    };
    let mut order: Vec<usize> = (0..g.values.len()).filter(|&v| life[v].is_some()).collect();
    order.sort_by_key(|&v| (std::cmp::Reverse(size(v)), v));

    let mut offsets = vec![None; g.values.len()];
    let mut placed: Vec<(usize, usize, (usize, usize))> = Vec::new(); // (offset, size, life)
    let mut arena = 0;
    let mut unshared = 0;
    for v in order {
        let (lv, sv) = (life[v].unwrap(), size(v));
        unshared += sv;
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|(_, _, l)| l.0 <= lv.1 && lv.0 <= l.1)
            .map(|&(o, s, _)| (o, s))
            .collect();
        busy.sort();
        let mut off = 0;
        for (o, s) in busy {
            if off + sv <= o {
                break;
            }
            off = off.max(o + s);
        }
        placed.push((off, sv, lv));
        offsets[v] = Some(off);
        arena = arena.max(off + sv);
    }
    Plan {
        offsets,
        arena_bytes: arena.max(ALIGN),
        unshared_bytes: unshared,
    }
}

impl Plan {
    pub fn offset(&self, v: ValueId) -> Option<usize> {
        self.offsets[v.0 as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;
    use crate::tensor::DType;

    /// Checks the planner's one invariant on a chain: values alive together never overlap,
    /// and a chain of equal-size ops reuses memory.
    #[test]
    fn chain_reuses_memory_without_overlap() {
        let mut g = Graph::new(DType::F32);
        let x = g.input("x", &[64, 64], DType::F32);
        let mut h = x;
        for _ in 0..10 {
            h = g.gelu(h);
        }
        g.keep(h, "out");
        let p = plan(&g);
        let life = lifetimes(&g);
        let sz = 64 * 64 * 4;
        for a in 0..g.values.len() {
            for b in a + 1..g.values.len() {
                if let (Some(la), Some(lb), Some(oa), Some(ob)) =
                    (life[a], life[b], p.offsets[a], p.offsets[b])
                {
                    if la.0 <= lb.1 && lb.0 <= la.1 {
                        assert!(oa + sz <= ob || ob + sz <= oa, "values {a} and {b} overlap");
                    }
                }
            }
        }
        assert!(
            p.arena_bytes <= 3 * sz,
            "arena {} should reuse memory",
            p.arena_bytes
        );
        assert_eq!(p.unshared_bytes, 11 * sz);
    }
}

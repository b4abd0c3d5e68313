//! `--shard I/N`: N processes split one evaluation file.
//!
//! Items are grouped by media file (data type and `path` as written, with `.` components
//! dropped), groups are numbered 0, 1, 2, … in the order of their first item in the file, and
//! shard I takes the groups whose number is I modulo N. Without shared media this is every
//! N-th item from I; with it, questions about one video stay together so that its prompt
//! prefix is cached once. The assignment depends only on the file, so shards run anywhere
//! agree. (Numbering by the first item's *index* instead would send every group to shard 0
//! for a file with three questions per video and N = 3.) An item without a path is a group of
//! its own.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use super::data::Entry;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// From 0.
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole file.
    pub const ALL: Shard = Shard { index: 0, count: 1 };
}

impl FromStr for Shard {
    type Err = Error;

    /// `I/N` with 0 ≤ I < N.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::flag("--shard", format!("{why}, got {s:?}"));
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| bad("expected I/N, such as 0/4"))?;
        let index: usize = i.trim().parse().map_err(|_| bad("I is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| bad("N is not a number"))?;
        if count == 0 {
            return Err(bad("N must be at least 1"));
        }
        if index >= count {
            return Err(bad("I must be in 0..N (shards are numbered from 0)"));
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The media key items are grouped by.
fn media_key(data_type: &str, path: &str) -> (String, PathBuf) {
    let norm: PathBuf = Path::new(path)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    (data_type.to_string(), norm)
}

/// Group number of each entry (see the module notes).
pub fn groups<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Vec<usize> {
    let mut first: HashMap<(String, PathBuf), usize> = HashMap::new();
    let mut next = 0;
    let mut fresh = || {
        next += 1;
        next - 1
    };
    entries
        .into_iter()
        .map(|e| {
            let key = match e {
                Entry::Item(it) => Some(media_key(it.data_type.as_str(), &it.path)),
                Entry::Error(err) => err
                    .path
                    .as_deref()
                    .map(|p| media_key(err.data_type.as_deref().unwrap_or(""), p)),
            };
            match key {
                Some(k) => *first.entry(k).or_insert_with(&mut fresh),
                None => fresh(),
            }
        })
        .collect()
}

/// The entries of `shard`, in file order.
pub fn select(entries: &[Entry], shard: Shard) -> Vec<&Entry> {
    groups(entries)
        .into_iter()
        .zip(entries)
        .filter(|(g, _)| g % shard.count == shard.index)
        .map(|(_, e)| e)
        .collect()
}

/// `entries` reordered so that each media group is contiguous (groups in the order of their
/// first entry, file order within a group): a batching engine then meets a video's questions
/// one after another and reuses its cached prefix before evicting it.
pub fn group_order<'a>(entries: &[&'a Entry]) -> Vec<&'a Entry> {
    let keys = groups(entries.iter().copied());
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (keys[i], i));
    order.into_iter().map(|i| entries[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::data::parse;

    fn entries(paths: &[&str]) -> Vec<Entry> {
        let items: Vec<String> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if p.is_empty() {
                    format!(r#"{{"problem_id": {i}}}"#)
                } else {
                    format!(
                        r#"{{"problem_id": {i}, "problem": "q", "problem_type": "numerical", "solution": "", "data_type": "video", "path": "{p}"}}"#
                    )
                }
            })
            .collect();
        parse(&format!("[{}]", items.join(",")), Path::new(""), false).unwrap()
    }

    fn ids(sel: &[&Entry]) -> Vec<usize> {
        sel.iter().map(|e| e.index()).collect()
    }

    #[test]
    fn parses_i_of_n() {
        assert_eq!(
            "1/4".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 4 }
        );
        assert_eq!(" 0 / 1 ".parse::<Shard>().unwrap(), Shard::ALL);
        for bad in ["4/4", "1/0", "1", "a/2", "-1/2", "1/2/3"] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.starts_with("--shard"), "{bad}: {e}");
        }
        assert_eq!(Shard { index: 2, count: 3 }.to_string(), "2/3");
    }

    #[test]
    fn every_nth_without_shared_media() {
        let e = entries(&["a", "b", "c", "d", "e", "f", "g"]);
        assert_eq!(ids(&select(&e, "0/3".parse().unwrap())), [0, 3, 6]);
        assert_eq!(ids(&select(&e, "1/3".parse().unwrap())), [1, 4]);
        assert_eq!(ids(&select(&e, "2/3".parse().unwrap())), [2, 5]);
        assert_eq!(ids(&select(&e, Shard::ALL)), [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn shared_media_stay_together() {
        // Three questions per video: groups 0, 1, 2, 3 spread over the shards.
        let e = entries(&[
            "v1", "./v1", "v1", "v2", "v2", "v2", "v3", "v3", "v3", "v4", "", "v1",
        ]);
        assert_eq!(groups(&e), [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 4, 0]);
        assert_eq!(ids(&select(&e, "0/3".parse().unwrap())), [0, 1, 2, 9, 11]);
        assert_eq!(ids(&select(&e, "1/3".parse().unwrap())), [3, 4, 5, 10]);
        assert_eq!(ids(&select(&e, "2/3".parse().unwrap())), [6, 7, 8]);
        // Every entry is in exactly one shard.
        let mut all: Vec<usize> = (0..3)
            .flat_map(|i| ids(&select(&e, Shard { index: i, count: 3 })))
            .collect();
        all.sort();
        assert_eq!(all, (0..12).collect::<Vec<_>>());
        let sel = select(&e, "0/3".parse().unwrap());
        assert_eq!(ids(&group_order(&sel)), [0, 1, 2, 11, 9]);
    }
}

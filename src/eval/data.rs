//! Video-R1 evaluation files: a JSON array, or JSON lines, of items with `problem_id`,
//! `problem`, `problem_type`, `options`, `solution`, `data_type`, `path` and optionally
//! `data_source`; any other field is kept as it is and copied to the results.
//!
//! A file that cannot be read as a whole (not UTF-8, invalid JSON, not a list of items, no
//! items, two items with one `problem_id`) is an error naming the file and the position. An
//! item that is wrong on its own (missing or mistyped field, unknown problem type, missing
//! media file) becomes an [`ItemError`] so that a run records it and goes on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::prompt::video_r1::ProblemType;

/// The fields the protocol reads; everything else goes to `extra`.
pub const KNOWN_FIELDS: [&str; 8] = [
    "problem_id",
    "problem",
    "problem_type",
    "options",
    "solution",
    "data_type",
    "path",
    "data_source",
];

/// Largest evaluation file read (the Video-R1 sets are a few MB).
pub const MAX_DATA_FILE: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Video,
    Image,
}

impl DataType {
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Video => "video",
            DataType::Image => "image",
        }
    }
}

/// A well-formed item.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalItem {
    /// Position in the data file, from 0.
    pub index: usize,
    /// A JSON number or string.
    pub problem_id: Value,
    pub problem: String,
    pub problem_type: ProblemType,
    /// The choices of a multiple-choice question (empty for the other types, whose `options`
    /// the protocol ignores).
    pub options: Vec<String>,
    pub solution: String,
    pub data_type: DataType,
    /// `path` as written in the file.
    pub path: String,
    /// The media file: `path` under the media root, or under the data file's folder.
    pub media: PathBuf,
    pub data_source: Option<String>,
    /// Fields outside [`KNOWN_FIELDS`] (ordered by name, as serde_json's map keeps them).
    pub extra: Map<String, Value>,
}

/// An item that cannot be run, with what could be read of it.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemError {
    pub index: usize,
    /// `null` when missing or neither a number nor a string.
    pub problem_id: Value,
    pub problem_type: Option<String>,
    pub data_type: Option<String>,
    pub path: Option<String>,
    pub data_source: Option<String>,
    pub error: String,
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Item(EvalItem),
    Error(ItemError),
}

impl Entry {
    pub fn index(&self) -> usize {
        match self {
            Entry::Item(it) => it.index,
            Entry::Error(e) => e.index,
        }
    }

    pub fn problem_id(&self) -> &Value {
        match self {
            Entry::Item(it) => &it.problem_id,
            Entry::Error(e) => &e.problem_id,
        }
    }

    /// What identifies the entry in a results file (see [`item_key`]).
    pub fn key(&self) -> String {
        item_key(self.problem_id(), self.index())
    }

    /// `path` as written, when the entry has one.
    pub fn path(&self) -> Option<&str> {
        match self {
            Entry::Item(it) => Some(&it.path),
            Entry::Error(e) => e.path.as_deref(),
        }
    }
}

/// The id of an item within its data file: the JSON text of `problem_id` (`12`, `"v_12"`), or
/// `#INDEX` for an item without a usable one.
pub fn item_key(problem_id: &Value, index: usize) -> String {
    match problem_id {
        Value::Number(_) | Value::String(_) => problem_id.to_string(),
        _ => format!("#{index}"),
    }
}

/// A loaded evaluation file.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub path: PathBuf,
    /// The file name, which results lines carry to tell data files apart.
    pub name: String,
    pub entries: Vec<Entry>,
}

impl Dataset {
    pub fn items(&self) -> impl Iterator<Item = &EvalItem> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Item(it) => Some(it),
            Entry::Error(_) => None,
        })
    }

    pub fn errors(&self) -> impl Iterator<Item = &ItemError> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Error(err) => Some(err),
            Entry::Item(_) => None,
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Folder that `path` is relative to (`--media-root`); default: the data file's folder.
    pub media_root: Option<PathBuf>,
    /// Do not check that media files exist (for reading a file without its media).
    pub skip_media_check: bool,
}

/// Reads an evaluation file.
pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Dataset> {
    let path = path.as_ref();
    let bytes = crate::fence::read_bounded(path, MAX_DATA_FILE, "an evaluation file")?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::file(
            path,
            format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        )
    })?;
    let base = match &opts.media_root {
        Some(root) => root.clone(),
        None => path.parent().unwrap_or(Path::new("")).to_path_buf(),
    };
    let entries =
        parse(&text, &base, !opts.skip_media_check).map_err(|msg| Error::file(path, msg))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok(Dataset {
        path: path.to_path_buf(),
        name,
        entries,
    })
}

/// Parses the text of an evaluation file; relative media paths are joined to `media_base`.
/// The error is a message for the whole file (position included).
pub fn parse(text: &str, media_base: &Path, check_media: bool) -> Result<Vec<Entry>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let values: Vec<Value> = match text.trim_start().chars().next() {
        Some('[') => match serde_json::from_str(text) {
            Ok(Value::Array(list)) => list,
            Ok(_) => unreachable!("text starting with '[' parses as an array"),
            Err(e) => return Err(format!("invalid JSON: {e}")),
        },
        Some('{') => {
            let mut list = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v = serde_json::from_str(line)
                    .map_err(|e| format!("line {}: invalid JSON: {e}", i + 1))?;
                list.push(v);
            }
            list
        }
        Some(_) => {
            return Err(
                "expected a JSON array of items or JSON lines (one item object per line)".into(),
            )
        }
        None => return Err("the file is empty".into()),
    };
    if values.is_empty() {
        return Err("no items".into());
    }
    let entries: Vec<Entry> = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| parse_item(i, v, media_base, check_media))
        .collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in &entries {
        if matches!(e.problem_id(), Value::Number(_) | Value::String(_)) {
            if let Some(first) = seen.insert(e.key(), e.index()) {
                return Err(format!(
                    "items {first} and {} have the same problem_id {} (ids must be unique: results and --resume go by them)",
                    e.index(),
                    e.problem_id()
                ));
            }
        }
    }
    Ok(entries)
}

fn parse_item(index: usize, v: Value, base: &Path, check_media: bool) -> Entry {
    let obj = match v {
        Value::Object(obj) => obj,
        other => {
            return Entry::Error(ItemError {
                index,
                problem_id: Value::Null,
                problem_type: None,
                data_type: None,
                path: None,
                data_source: None,
                error: format!("item {index}: expected an object, got {}", kind(&other)),
                extra: Map::new(),
            })
        }
    };
    match item_from(index, &obj, base, check_media) {
        Ok(item) => Entry::Item(item),
        Err(msg) => {
            let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
            let problem_id = match obj.get("problem_id") {
                Some(v @ (Value::Number(_) | Value::String(_))) => v.clone(),
                _ => Value::Null,
            };
            Entry::Error(ItemError {
                index,
                problem_id,
                problem_type: s("problem_type"),
                data_type: s("data_type"),
                path: s("path"),
                data_source: s("data_source"),
                error: msg,
                extra: extra_fields(&obj),
            })
        }
    }
}

fn extra_fields(obj: &Map<String, Value>) -> Map<String, Value> {
    obj.iter()
        .filter(|(k, _)| !KNOWN_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn item_from(
    index: usize,
    obj: &Map<String, Value>,
    base: &Path,
    check_media: bool,
) -> Result<EvalItem, String> {
    let string = |k: &str| -> Result<String, String> {
        match obj.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!(
                "field \"{k}\" must be a string, got {}",
                kind(other)
            )),
            None => Err(format!("missing field \"{k}\"")),
        }
    };
    let problem_id = match obj.get("problem_id") {
        Some(v @ (Value::Number(_) | Value::String(_))) => v.clone(),
        Some(other) => {
            return Err(format!(
                "field \"problem_id\" must be a number or a string, got {}",
                kind(other)
            ))
        }
        None => return Err("missing field \"problem_id\"".into()),
    };
    let problem = string("problem")?;
    let type_name = string("problem_type")?;
    // Exact names only: the reference indexes its instruction table with them.
    let problem_type = ProblemType::ALL
        .into_iter()
        .find(|t| t.as_str() == type_name)
        .ok_or_else(|| {
            format!(
                "unknown problem_type {type_name:?} (expected one of {})",
                ProblemType::ALL
                    .map(|t| format!("{:?}", t.as_str()))
                    .join(", ")
            )
        })?;
    let options = if problem_type == ProblemType::MultipleChoice {
        let list = match obj.get("options") {
            Some(Value::Array(list)) => list,
            Some(other) => {
                return Err(format!(
                    "field \"options\" must be a list of strings, got {}",
                    kind(other)
                ))
            }
            None => return Err("missing field \"options\" (multiple choice)".into()),
        };
        if list.is_empty() {
            return Err("a multiple-choice item needs at least one option".into());
        }
        list.iter()
            .enumerate()
            .map(|(j, o)| {
                o.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("option {j} must be a string, got {}", kind(o)))
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let solution = string("solution")?;
    let data_type = match string("data_type")?.as_str() {
        "video" => DataType::Video,
        "image" => DataType::Image,
        other => {
            return Err(format!(
                "unknown data_type {other:?} (expected \"video\" or \"image\")"
            ))
        }
    };
    let path = string("path")?;
    if path.is_empty() {
        return Err("field \"path\" is empty".into());
    }
    let data_source = match obj.get("data_source") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(format!(
                "field \"data_source\" must be a string, got {}",
                kind(other)
            ))
        }
    };
    let media = base.join(&path);
    if check_media {
        match std::fs::metadata(&media) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(format!("media {} is not a file", media.display())),
            Err(e) => return Err(format!("media {}: {e}", media.display())),
        }
    }
    Ok(EvalItem {
        index,
        problem_id,
        problem,
        problem_type,
        options,
        solution,
        data_type,
        path,
        media,
        data_source,
        extra: extra_fields(obj),
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item_json(id: i64, extra: &str) -> String {
        format!(
            r#"{{"problem_id": {id}, "problem": "Q?", "problem_type": "numerical", "options": [], "solution": "<answer>3</answer>", "data_type": "image", "path": "./a.png"{extra}}}"#
        )
    }

    fn parse_ok(text: &str) -> Vec<Entry> {
        parse(text, Path::new("/data"), false).unwrap()
    }

    #[test]
    fn array_and_lines_give_the_same_items() {
        let a = format!("[{}, {}]", item_json(1, ""), item_json(2, ""));
        let l = format!("{}\n\n{}\r\n", item_json(1, ""), item_json(2, ""));
        assert_eq!(parse_ok(&a), parse_ok(&l));
        let Entry::Item(it) = &parse_ok(&a)[1] else {
            panic!("expected an item")
        };
        assert_eq!(it.index, 1);
        assert_eq!(it.problem_id, Value::from(2));
        assert_eq!(it.problem_type, ProblemType::Numerical);
        assert_eq!(it.media, Path::new("/data/./a.png"));
        assert_eq!(it.data_source, None);
    }

    #[test]
    fn extra_fields_are_kept() {
        let e = parse_ok(&format!(
            "[{}]",
            item_json(
                1,
                r#", "zeta": 1, "duration": {"s": 2.5}, "data_source": "x""#
            )
        ));
        let Entry::Item(it) = &e[0] else {
            panic!("expected an item")
        };
        assert_eq!(it.extra.keys().collect::<Vec<_>>(), ["duration", "zeta"]);
        assert_eq!(it.extra["duration"]["s"], 2.5);
        assert_eq!(it.data_source.as_deref(), Some("x"));
    }

    #[test]
    fn malformed_items_are_recorded() {
        let cases = [
            (r#"{"problem_id": 1}"#, "missing field \"problem\""),
            (
                &item_json(2, "").replace("\"numerical\"", "\"Numerical\""),
                "unknown problem_type \"Numerical\"",
            ),
            (
                &item_json(3, "").replace("\"numerical\"", "\"multiple choice\""),
                "needs at least one option",
            ),
            (
                &item_json(4, "").replace("\"image\"", "\"audio\""),
                "unknown data_type \"audio\"",
            ),
            (
                &item_json(5, "").replace("\"Q?\"", "7"),
                "field \"problem\" must be a string, got a number",
            ),
            (
                &item_json(6, r#", "data_source": 3"#),
                "\"data_source\" must be a string",
            ),
            ("[1]", "expected an object, got a number"),
        ];
        for (i, (json, want)) in cases.iter().enumerate() {
            let e = parse_ok(json);
            let Entry::Error(err) = &e[0] else {
                panic!("case {i}: expected an error, got {e:?}")
            };
            assert!(err.error.contains(want), "case {i}: {}", err.error);
        }
        let e = parse_ok(&item_json(9, r#", "x": true"#).replace("\"solution\"", "\"sol\""));
        let Entry::Error(err) = &e[0] else {
            panic!("expected an error")
        };
        assert_eq!(err.problem_id, Value::from(9));
        assert_eq!(err.problem_type.as_deref(), Some("numerical"));
        assert_eq!(err.extra.keys().collect::<Vec<_>>(), ["sol", "x"]);
        assert_eq!(e[0].key(), "9");
    }

    #[test]
    fn options_are_ignored_outside_multiple_choice() {
        let e = parse_ok(&item_json(1, "").replace("\"options\": []", "\"options\": null"));
        assert!(matches!(&e[0], Entry::Item(it) if it.options.is_empty()));
    }

    #[test]
    fn malformed_files_are_errors() {
        let bad = [
            ("", "empty"),
            ("  \n", "empty"),
            ("[]", "no items"),
            ("[{\"a\": 1},", "invalid JSON"),
            ("\"x\"", "expected a JSON array"),
            ("{\"a\": 1}\n{\"a\": ", "line 2: invalid JSON"),
        ];
        for (text, want) in bad {
            let err = parse(text, Path::new(""), false).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let dup = format!("[{}, {}]", item_json(4, ""), item_json(4, ""));
        let err = parse(&dup, Path::new(""), false).unwrap_err();
        assert!(
            err.contains("items 0 and 1 have the same problem_id 4"),
            "{err}"
        );
    }

    #[test]
    fn keys() {
        assert_eq!(item_key(&Value::from(12), 3), "12");
        assert_eq!(item_key(&Value::from("v12"), 3), "\"v12\"");
        assert_eq!(item_key(&Value::Null, 3), "#3");
    }

    #[test]
    fn media_is_checked_and_resolved() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let data = dir.path().join("data.jsonl");
        let text = format!(
            "{}\n{}\n{}\n",
            item_json(1, ""),
            item_json(2, "").replace("./a.png", "missing.png"),
            item_json(3, "").replace("./a.png", "sub")
        );
        std::fs::write(&data, text).unwrap();
        let ds = load(&data, &LoadOptions::default()).unwrap();
        assert_eq!(ds.name, "data.jsonl");
        assert!(
            matches!(&ds.entries[0], Entry::Item(it) if it.media == dir.path().join("./a.png"))
        );
        let errs: Vec<_> = ds.errors().map(|e| e.error.clone()).collect();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains("missing.png"), "{}", errs[0]);
        assert!(errs[1].contains("is not a file"), "{}", errs[1]);

        let root = tempfile::tempdir().unwrap();
        let opts = LoadOptions {
            media_root: Some(root.path().to_path_buf()),
            skip_media_check: false,
        };
        let ds = load(&data, &opts).unwrap();
        assert_eq!(ds.errors().count(), 3);
        let opts = LoadOptions {
            skip_media_check: true,
            ..opts
        };
        let ds = load(&data, &opts).unwrap();
        assert_eq!(ds.items().count(), 3);
        assert_eq!(
            ds.items().next().unwrap().media,
            root.path().join("./a.png")
        );

        let err = load(dir.path().join("nope.json"), &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("nope.json"), "{err}");
        std::fs::write(&data, b"[\xff]").unwrap();
        let err = load(&data, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }
}

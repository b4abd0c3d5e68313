//! Tensor inventories: which tensors an architecture needs, under which names and shapes, and
//! what each one is for. Every architecture declares one [`Inventory`] (a table of
//! [`TensorDef`] rows); the loader's presence / dtype / shape checks, the synthetic weights of
//! `reel bench` and `reel-synth-checkpoint`, and the quantization presets (which select by
//! [`Role`] and layer index) all read that one table.

/// The half of a vision-language model a tensor belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tower {
    Text,
    Vision,
}

/// Which tensors to list, check or load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Text,
    Vision,
    Both,
}

impl Part {
    pub fn includes(self, tower: Tower) -> bool {
        match self {
            Part::Both => true,
            Part::Text => tower == Tower::Text,
            Part::Vision => tower == Tower::Vision,
        }
    }
}

/// What a tensor does. The weight and the bias of one linear layer are separate roles; a
/// second architecture adds the roles it introduces (e.g. per-head q/k norms) here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    // Language model.
    Embed,
    AttnNorm,
    AttnQ,
    AttnQBias,
    AttnK,
    AttnKBias,
    AttnV,
    AttnVBias,
    AttnO,
    MlpNorm,
    MlpGate,
    MlpUp,
    MlpDown,
    FinalNorm,
    LmHead,
    // Vision tower.
    VisionPatchEmbed,
    VisionNorm1,
    VisionNorm2,
    VisionQkv,
    VisionQkvBias,
    VisionProj,
    VisionProjBias,
    VisionGate,
    VisionGateBias,
    VisionUp,
    VisionUpBias,
    VisionDown,
    VisionDownBias,
    MergerNorm,
    MergerFc1,
    MergerFc1Bias,
    MergerFc2,
    MergerFc2Bias,
    /// A tensor the inventory does not list.
    Other,
}

impl Role {
    /// Whether the tensor is the weight of a matmul (the linear layers, lm_head, the patch
    /// embedding as a matrix, the merger).
    pub fn is_matmul_weight(self) -> bool {
        use Role::*;
        matches!(
            self,
            AttnQ
                | AttnK
                | AttnV
                | AttnO
                | MlpGate
                | MlpUp
                | MlpDown
                | LmHead
                | VisionPatchEmbed
                | VisionQkv
                | VisionProj
                | VisionGate
                | VisionUp
                | VisionDown
                | MergerFc1
                | MergerFc2
        )
    }
}

/// What the quantization presets need to know about one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorClass {
    pub tower: Tower,
    pub role: Role,
    /// Decoder layer or vision block, for per-layer tensors.
    pub layer: Option<usize>,
}

/// One row of an inventory: a tensor, or one tensor per layer when `pattern` holds `{i}`.
pub struct TensorDef<C> {
    pub tower: Tower,
    pub role: Role,
    /// The canonical name; `{i}` stands for the layer (or block) index.
    pub pattern: &'static str,
    /// Exact shape as the checkpoint stores it (`[out, in]` for linear weights).
    pub shape: fn(&C) -> Vec<usize>,
    /// Whether the configuration has this tensor at all (e.g. no lm_head when tied).
    pub present: fn(&C) -> bool,
}

impl<C> TensorDef<C> {
    /// A tensor every configuration has.
    pub const fn new(
        tower: Tower,
        role: Role,
        pattern: &'static str,
        shape: fn(&C) -> Vec<usize>,
    ) -> Self {
        TensorDef {
            tower,
            role,
            pattern,
            shape,
            present: |_| true,
        }
    }

    fn is_layered(&self) -> bool {
        self.pattern.contains("{i}")
    }
}

/// One tensor of a concrete configuration: the inventory row expanded for its layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub tower: Tower,
    pub role: Role,
    pub layer: Option<usize>,
}

impl TensorSpec {
    pub fn class(&self) -> TensorClass {
        TensorClass {
            tower: self.tower,
            role: self.role,
            layer: self.layer,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An architecture's tensor table.
pub struct Inventory<C: 'static> {
    pub defs: &'static [TensorDef<C>],
    /// Layers (text) or blocks (vision) the per-layer rows repeat over.
    pub layers: fn(&C, Tower) -> usize,
    /// Other spellings of canonical name prefixes (canonical, alternate), e.g. the names newer
    /// transformers releases save; loading and classification accept both.
    pub aliases: &'static [(&'static str, &'static str)],
    /// Canonical prefixes whose unlisted tensors still belong to a tower (default: text).
    pub tower_prefixes: &'static [(&'static str, Tower)],
}

impl<C> Inventory<C> {
    /// Every tensor `part` needs, in table order per tower: the single tensors, then layer
    /// by layer.
    pub fn expand(&self, cfg: &C, part: Part) -> Vec<TensorSpec> {
        let mut out = Vec::new();
        for tower in [Tower::Text, Tower::Vision] {
            if !part.includes(tower) {
                continue;
            }
            let rows = || {
                self.defs
                    .iter()
                    .filter(move |d| d.tower == tower && (d.present)(cfg))
            };
            let spec = |d: &TensorDef<C>, name: String, layer| TensorSpec {
                name,
                shape: (d.shape)(cfg),
                tower,
                role: d.role,
                layer,
            };
            for d in rows().filter(|d| !d.is_layered()) {
                out.push(spec(d, d.pattern.to_string(), None));
            }
            for i in 0..(self.layers)(cfg, tower) {
                for d in rows().filter(|d| d.is_layered()) {
                    out.push(spec(d, d.pattern.replace("{i}", &i.to_string()), Some(i)));
                }
            }
        }
        out
    }

    /// The other spelling of a canonical name, if it has one.
    pub fn alternate_name(&self, canonical: &str) -> Option<String> {
        self.aliases.iter().find_map(|(canon, alt)| {
            canonical
                .strip_prefix(canon)
                .map(|rest| format!("{alt}{rest}"))
        })
    }

    /// The canonical spelling of a name given in either spelling.
    fn canonical<'a>(&self, name: &'a str) -> std::borrow::Cow<'a, str> {
        self.aliases
            .iter()
            .find_map(|(canon, alt)| name.strip_prefix(alt).map(|rest| format!("{canon}{rest}")))
            .map_or(name.into(), Into::into)
    }

    /// Role, tower and layer of a tensor named in either spelling; a name no row matches is
    /// [`Role::Other`], in the tower its prefix names.
    pub fn classify(&self, name: &str) -> TensorClass {
        let name = self.canonical(name);
        for d in self.defs {
            let layer = match d.pattern.split_once("{i}") {
                None if d.pattern == name => None,
                None => continue,
                Some((pre, post)) => {
                    let Some(mid) = name
                        .strip_prefix(pre)
                        .and_then(|rest| rest.strip_suffix(post))
                    else {
                        continue;
                    };
                    match mid.parse::<usize>() {
                        Ok(i) if mid.bytes().all(|b| b.is_ascii_digit()) => Some(i),
                        _ => continue,
                    }
                }
            };
            return TensorClass {
                tower: d.tower,
                role: d.role,
                layer,
            };
        }
        let tower = self
            .tower_prefixes
            .iter()
            .find(|(p, _)| name.starts_with(p))
            .map_or(Tower::Text, |&(_, t)| t);
        TensorClass {
            tower,
            role: Role::Other,
            layer: None,
        }
    }
}

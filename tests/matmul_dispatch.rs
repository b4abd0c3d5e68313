//! Which kernel family the CUDA backend's dispatcher (`pick`, a pure function) gives every
//! matmul of the real model; no device needed.

use reel::backend::cuda::matmul::{pick, MatmulCase, MatmulKernel, XStage};
use reel::model::inventory::{Part, Role, Tower};
use reel::model::qwen2_5_vl::{inventory, ModelConfig};
use reel::quantize::preset::{choose_type, ModelFacts, Preset};
use reel::tensor::DType;

/// Every matmul of the 7B model (the tensor inventory's linear layers, and the fused QKV and
/// gate/up the model runs), at the batch sizes it runs them with, for each storage type the
/// presets give it (bf16, q8_0, q4_k_m; the vision tower bf16 or quantized on request), with
/// bf16 activations in contiguous rows (stride K) at a 256-byte aligned base, as the graph
/// allocates them: M = 1 takes a vector GEMV, M >= 16 a tensor-core GEMM, nothing the scalar
/// kernel. The vision tower and merger never run one row; their smallest input (one 28 x 28
/// image, 4 patches, 1 merged token) is checked instead.
#[test]
fn every_real_matmul_takes_a_fast_kernel() {
    use MatmulKernel::*;
    let cfg = ModelConfig::qwen2_5_vl_7b();
    let facts = ModelFacts {
        n_layers: cfg.text.num_hidden_layers,
        tied_embeddings: false,
    };
    let specs: Vec<_> = inventory::expected(&cfg, Part::Both)
        .into_iter()
        .filter(|s| s.role.is_matmul_weight() && s.layer.is_none_or(|l| l == 0 || l == 1))
        .collect();
    let roles: std::collections::HashSet<Role> = specs.iter().map(|s| s.role).collect();
    assert_eq!(
        roles.len(),
        16,
        "every linear role of the inventory is enumerated"
    );
    let mut seen_k: Vec<usize> = Vec::new();
    let mut checked = 0;
    for preset in [Preset::Bf16, Preset::Q8_0, Preset::Q4KM] {
        for quantize_vision in [false, true] {
            for s in &specs {
                let n = s.shape[0];
                let k: usize = s.shape[1..].iter().product();
                let w = choose_type(
                    preset,
                    s.class(),
                    &s.shape,
                    DType::BF16,
                    facts,
                    quantize_vision,
                )
                .dtype;
                // The model also runs q/k/v and gate/up as one matmul each: same K, N summed
                // (N does not enter the choice; listed for the record).
                let ns = match s.role {
                    Role::AttnQ => vec![n, n + 2 * 512],
                    Role::MlpGate => vec![n, 2 * n],
                    _ => vec![n],
                };
                let ms: &[usize] = match s.tower {
                    Tower::Text => &[1, 16, 4096, 16384],
                    Tower::Vision if s.role == Role::MergerFc1 || s.role == Role::MergerFc2 => {
                        &[1, 16, 4096]
                    }
                    Tower::Vision => &[4, 16, 4096, 16384],
                };
                if !seen_k.contains(&k) {
                    seen_k.push(k);
                }
                for &n in &ns {
                    for &m in ms {
                        let c = MatmulCase {
                            m,
                            n,
                            k,
                            w,
                            x: DType::BF16,
                            x_rows_16b: (2 * k).is_multiple_of(16),
                            w_rows_16b: w.is_quantized() || (2 * k).is_multiple_of(16),
                        };
                        let got = pick(&c);
                        let what =
                            format!("{} ({preset:?}, {w}) M={m} N={n} K={k}: {got:?}", s.name);
                        assert_ne!(got, GemvScalar, "{what}");
                        if m >= 16 {
                            assert!(matches!(got, GemmMma | QGemm(_)), "{what}");
                        } else if k.is_multiple_of(8) {
                            assert!(matches!(got, GemvV16 | QGemv(_, XStage::Bf16)), "{what}");
                        } else {
                            // No 16-byte GEMV reads a 3420-long row: the tensor-core GEMM does.
                            assert_eq!(got, GemmMma, "{what}");
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    // The shapes include the unaligned one that used to fall to the scalar kernel, and the
    // patch embedding's 3 x 2 x 14 x 14.
    seen_k.sort();
    assert_eq!(seen_k, vec![1176, 1280, 3420, 3584, 5120, 18944]);
    assert!(checked > 500, "{checked}");
}

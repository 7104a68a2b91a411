//! Start-up checks of a model directory. mistral.rs reports (or panics on) a
//! broken directory deep inside loading; these checks name the file and the
//! fix first, so a bad directory stops a stage at start-up, never mid-request.

use crate::{protocol, PolicyError, PolicyMeta, META_FILE};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What the checks learned about a model directory.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub dir: PathBuf,
    /// Registry version (from `policy.json`, else a `vNNNN` directory name).
    pub version: Option<u32>,
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub parameters: usize,
    pub eos_token: String,
    pub meta: Option<PolicyMeta>,
}

const INIT_FIX: &str = "point llm.model_dir at a Hugging Face Llama-family directory, or build one with `mrrec model init --out DIR`";

/// Parses `vNNNN` (a registry directory name).
pub fn version_from_dir_name(dir: &Path) -> Option<u32> {
    let name = dir.file_name()?.to_str()?;
    let digits = name.strip_prefix('v')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn read_json(path: &Path) -> Result<Value, PolicyError> {
    if !path.is_file() {
        return Err(PolicyError::bad_file(path, "missing", INIT_FIX));
    }
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        PolicyError::bad_file(
            path,
            format!("not valid JSON ({e})"),
            "restore the file from the model's source",
        )
    })
}

fn usize_field(config: &Value, path: &Path, key: &str) -> Result<usize, PolicyError> {
    config
        .get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .filter(|v| *v > 0)
        .ok_or_else(|| {
            PolicyError::bad_file(
                path,
                format!("`{key}` is missing or not a positive integer"),
                "use a config.json written for this model (mistral.rs reads it to build the network)",
            )
        })
}

/// Reads a safetensors header: tensor name → shape, and checks the file is
/// long enough for the data the header describes.
fn safetensors_shapes(path: &Path) -> Result<Vec<(String, Vec<usize>)>, PolicyError> {
    let fix = "re-create the weights (`mrrec model init`) or copy model.safetensors again";
    let mut file = std::fs::File::open(path).map_err(|e| PolicyError::io(path, e))?;
    let len = file.metadata().map_err(|e| PolicyError::io(path, e))?.len();
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix)
        .map_err(|_| PolicyError::bad_file(path, "shorter than a safetensors header", fix))?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > 100 << 20 || 8 + header_len > len {
        return Err(PolicyError::bad_file(
            path,
            format!("header length {header_len} does not fit a {len}-byte file"),
            fix,
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| PolicyError::io(path, e))?;
    let header: Value = serde_json::from_slice(&header)
        .map_err(|e| PolicyError::bad_file(path, format!("header is not JSON ({e})"), fix))?;
    let Value::Object(entries) = header else {
        return Err(PolicyError::bad_file(
            path,
            "header is not a JSON object",
            fix,
        ));
    };
    let data_len = len - 8 - header_len;
    let mut shapes = Vec::new();
    for (name, entry) in entries {
        if name == "__metadata__" {
            continue;
        }
        let shape: Option<Vec<usize>> =
            entry
                .get("shape")
                .and_then(Value::as_array)
                .and_then(|dims| {
                    dims.iter()
                        .map(|d| d.as_u64().map(|d| d as usize))
                        .collect()
                });
        let end = entry
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|o| o.get(1))
            .and_then(Value::as_u64);
        match (shape, end) {
            (Some(shape), Some(end)) if end <= data_len => shapes.push((name, shape)),
            (Some(_), Some(end)) => {
                return Err(PolicyError::bad_file(
                    path,
                    format!("tensor {name} ends at byte {end} of {data_len} (truncated file)"),
                    fix,
                ))
            }
            _ => {
                return Err(PolicyError::bad_file(
                    path,
                    format!("tensor {name} has no valid shape or offsets"),
                    fix,
                ))
            }
        }
    }
    Ok(shapes)
}

/// Checks everything mistral.rs needs from `dir` before it is handed over.
pub fn check_model_dir(dir: &Path) -> Result<ModelInfo, PolicyError> {
    if !dir.is_dir() {
        return Err(PolicyError::bad_file(dir, "no such directory", INIT_FIX));
    }
    let config_path = dir.join("config.json");
    let config = read_json(&config_path)?;
    let architecture = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if architecture.is_empty() {
        return Err(PolicyError::bad_file(
            &config_path,
            "`architectures` is missing",
            "add e.g. \"architectures\": [\"LlamaForCausalLM\"] (mistral.rs picks the network from it)",
        ));
    }
    let vocab_size = usize_field(&config, &config_path, "vocab_size")?;
    let hidden_size = usize_field(&config, &config_path, "hidden_size")?;
    let num_layers = usize_field(&config, &config_path, "num_hidden_layers")?;
    let heads = usize_field(&config, &config_path, "num_attention_heads")?;
    if !hidden_size.is_multiple_of(heads) {
        return Err(PolicyError::bad_file(
            &config_path,
            format!("hidden_size {hidden_size} is not a multiple of num_attention_heads {heads}"),
            INIT_FIX,
        ));
    }

    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(PolicyError::bad_file(&tokenizer_path, "missing", INIT_FIX));
    }
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| {
        PolicyError::bad_file(
            &tokenizer_path,
            format!("cannot be loaded ({e})"),
            "use a tokenizer.json saved by the Hugging Face tokenizers library",
        )
    })?;
    if tokenizer.get_decoder().is_none() {
        return Err(PolicyError::bad_file(
            &tokenizer_path,
            "has no decoder, so generated tokens cannot be turned back into text",
            "add a decoder (a byte-level BPE needs {\"type\":\"ByteLevel\"}) or rebuild with `mrrec model init`",
        ));
    }
    let tokenizer_config_path = dir.join("tokenizer_config.json");
    let eos_token = if tokenizer_config_path.is_file() {
        let tc = read_json(&tokenizer_config_path)?;
        match tc.get("eos_token") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => o
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or(protocol::EOS)
                .to_owned(),
            _ => protocol::EOS.to_owned(),
        }
    } else {
        protocol::EOS.to_owned()
    };
    if tokenizer.token_to_id(&eos_token).is_none() {
        return Err(PolicyError::bad_file(
            &tokenizer_path,
            format!("the end-of-sequence token {eos_token:?} is not in the vocabulary, so generation would never stop"),
            "add it as a special token, or set `eos_token` in tokenizer_config.json to the model's EOS",
        ));
    }
    let tokenizer_vocab = tokenizer.get_vocab_size(true);
    if tokenizer_vocab > vocab_size {
        return Err(PolicyError::bad_file(
            &config_path,
            format!(
                "vocab_size {vocab_size} is smaller than the tokenizer's {tokenizer_vocab} tokens"
            ),
            "use the config.json and tokenizer.json of the same model",
        ));
    }

    let mut weight_files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| PolicyError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    weight_files.sort();
    if weight_files.is_empty() {
        return Err(PolicyError::bad_file(
            &dir.join(crate::WEIGHTS_FILE),
            "missing (no *.safetensors file in the directory)",
            INIT_FIX,
        ));
    }
    let mut parameters = 0usize;
    for path in &weight_files {
        for (name, shape) in safetensors_shapes(path)? {
            parameters += shape.iter().product::<usize>();
            if name == "model.embed_tokens.weight" && shape != [vocab_size, hidden_size] {
                return Err(PolicyError::bad_file(
                    path,
                    format!("{name} has shape {shape:?}, config.json says [{vocab_size}, {hidden_size}]"),
                    "use the config.json and weights of the same model",
                ));
            }
        }
    }
    let meta_path = dir.join(META_FILE);
    let meta: Option<PolicyMeta> = if meta_path.is_file() {
        Some(serde_json::from_value(read_json(&meta_path)?).map_err(|e| {
            PolicyError::bad_file(
                &meta_path,
                format!("unreadable ({e})"),
                "remove it or restore it",
            )
        })?)
    } else {
        None
    };
    let version = meta
        .as_ref()
        .and_then(|m| m.version)
        .or_else(|| version_from_dir_name(dir));
    Ok(ModelInfo {
        dir: dir.to_owned(),
        version,
        architecture,
        vocab_size,
        hidden_size,
        num_layers,
        parameters,
        eos_token,
        meta,
    })
}

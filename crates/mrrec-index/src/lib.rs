//! tantivy indexes: [`MemoryIndex`] (memory entries; BM25 over one user's
//! entries, filtered by level and category) and [`ItemIndex`] (the catalog:
//! title, categories, description, attributes).
//!
//! Documents are replaced by id ([`MemoryIndex::upsert`]), or added when known
//! to be new ([`MemoryIndex::add`]); search returns an id once. A commit
//! carries a payload (the store offsets it reflects) so a restart can tell
//! whether the index is current.

mod items;
mod memory;
#[cfg(test)]
mod tests;

pub use items::{category_key, names_as_words, ItemIndex};
pub use memory::{MemoryIndex, SearchHit};

/// An index failure.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("index directory {path}: {message}")]
    Directory { path: String, message: String },
    #[error("this index was opened read-only")]
    ReadOnly,
}

/// Lower-cased words of `text` as the default tokenizer makes them.
pub(crate) fn words(
    index: &tantivy::Index,
    field: tantivy::schema::Field,
    text: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(mut tokenizer) = index.tokenizer_for_field(field) {
        let mut stream = tokenizer.token_stream(text);
        while let Some(token) = stream.next() {
            out.push(token.text.clone());
        }
    }
    out.sort();
    out.dedup();
    out
}

pub(crate) fn open_or_create(
    dir: Option<&std::path::Path>,
    schema: tantivy::schema::Schema,
) -> Result<tantivy::Index, IndexError> {
    match dir {
        None => Ok(tantivy::Index::create_in_ram(schema)),
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| IndexError::Directory {
                path: dir.display().to_string(),
                message: e.to_string(),
            })?;
            let directory = tantivy::directory::MmapDirectory::open(dir).map_err(|e| {
                IndexError::Directory {
                    path: dir.display().to_string(),
                    message: e.to_string(),
                }
            })?;
            Ok(tantivy::Index::open_or_create(directory, schema)?)
        }
    }
}

/// An index in `dir` (or RAM) with one writer and a manually reloaded reader.
/// One indexing thread: on small machines more threads only contend with
/// the stage and the store for cores.
pub(crate) fn open_with_writer(
    dir: Option<&std::path::Path>,
    schema: tantivy::schema::Schema,
    arena_bytes: usize,
) -> Result<(tantivy::Index, tantivy::IndexWriter, tantivy::IndexReader), IndexError> {
    let index = match (open_or_create(dir, schema.clone()), dir) {
        // An index written by an older version (another schema): the
        // writer starts it afresh, and its owner rebuilds it from the
        // store, the source of truth (distill: an item index shorter than
        // the catalog, a memory index whose offsets differ).
        (Err(IndexError::Tantivy(tantivy::TantivyError::SchemaError(_))), Some(dir)) => {
            std::fs::remove_dir_all(dir).map_err(|e| IndexError::Directory {
                path: dir.display().to_string(),
                message: e.to_string(),
            })?;
            open_or_create(Some(dir), schema)?
        }
        (other, _) => other?,
    };
    let writer = index.writer_with_num_threads(1, arena_bytes)?;
    let reader = index
        .reader_builder()
        .reload_policy(tantivy::ReloadPolicy::Manual)
        .try_into()?;
    Ok((index, writer, reader))
}

/// An index in `dir` opened for searching only (another process or stage
/// owns the writer); it follows the writer's commits by itself.
pub(crate) fn open_reader(
    dir: &std::path::Path,
    schema: tantivy::schema::Schema,
) -> Result<(tantivy::Index, tantivy::IndexReader), IndexError> {
    let index = open_or_create(Some(dir), schema)?;
    let reader = index
        .reader_builder()
        .reload_policy(tantivy::ReloadPolicy::OnCommitWithDelay)
        .try_into()?;
    Ok((index, reader))
}

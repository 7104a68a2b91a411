//! The item catalog index: BM25 over title, categories, description and
//! attributes, and each item's categories as exact terms (lower-cased), so
//! the ranker can find every item filed under a category a profile names.
//! Each document also stores a fingerprint of what was indexed for it, so
//! an owner can bring the index up to date with the catalog item by item
//! ([`ItemIndex::fingerprints`]) instead of rebuilding it.

use crate::{open_reader, open_with_writer, words, IndexError};
use mrrec_messages::Item;
use std::collections::HashMap;
use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TantivyDocument, Value, STORED, STRING, TEXT,
};
use tantivy::{doc, Index, IndexReader, IndexWriter, Term};

/// The catalog in tantivy.
pub struct ItemIndex {
    index: Index,
    reader: IndexReader,
    /// `None` when opened read-only.
    writer: Option<IndexWriter>,
    id: Field,
    text: Field,
    category: Field,
    fingerprint: Field,
}

/// The exact term a category is indexed and looked up under.
pub fn category_key(category: &str) -> String {
    category.trim().to_lowercase()
}

/// Whether `phrase` occurs in `text` as whole words: no letter or digit
/// right before or after it (`"sci-fi"` holds `"sci"`, `"science"` does
/// not). How a query or a profile names a category; both are compared
/// lower-cased by the caller.
pub fn names_as_words(text: &str, phrase: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    !phrase.is_empty()
        && text.match_indices(phrase).any(|(at, _)| {
            !word(text[..at].chars().next_back()) && !word(text[at + phrase.len()..].chars().next())
        })
}

impl ItemIndex {
    /// Opens (or creates) the index in `dir`; `None` keeps it in memory.
    pub fn open(dir: Option<&std::path::Path>) -> Result<Self, IndexError> {
        let (schema, [id, text, category, fingerprint]) = Self::schema();
        let (index, writer, reader) = open_with_writer(dir, schema, 32 * 1024 * 1024)?;
        Ok(Self {
            index,
            reader,
            writer: Some(writer),
            id,
            text,
            category,
            fingerprint,
        })
    }

    /// Opens the index in `dir` for searching only, following the commits of
    /// whoever writes it.
    pub fn open_read_only(dir: &std::path::Path) -> Result<Self, IndexError> {
        let (schema, [id, text, category, fingerprint]) = Self::schema();
        let (index, reader) = open_reader(dir, schema)?;
        Ok(Self {
            index,
            reader,
            writer: None,
            id,
            text,
            category,
            fingerprint,
        })
    }

    fn schema() -> (Schema, [Field; 4]) {
        let mut builder = Schema::builder();
        let id = builder.add_text_field("id", STRING | STORED);
        let text = builder.add_text_field("text", TEXT);
        let category = builder.add_text_field("category", STRING);
        let fingerprint = builder.add_text_field("fingerprint", STORED);
        (builder.build(), [id, text, category, fingerprint])
    }

    /// A fingerprint of what the index holds for `item` (its searchable
    /// text and its category terms).
    pub fn fingerprint_of(item: &Item) -> String {
        let mut indexed = Self::text_of(item);
        for category in &item.categories {
            indexed.push('\u{1f}');
            indexed.push_str(&category_key(category));
        }
        mrrec_memory::fingerprint(&indexed)
    }

    /// Each committed item's id and [`ItemIndex::fingerprint_of`] as indexed.
    pub fn fingerprints(&self) -> Result<HashMap<String, String>, IndexError> {
        let searcher = self.reader.searcher();
        let mut out = HashMap::new();
        for address in searcher.search(&AllQuery, &DocSetCollector)? {
            let doc: TantivyDocument = searcher.doc(address)?;
            let text = |field| doc.get_first(field).and_then(|v| v.as_str());
            if let (Some(id), Some(fingerprint)) = (text(self.id), text(self.fingerprint)) {
                out.insert(id.to_owned(), fingerprint.to_owned());
            }
        }
        Ok(out)
    }

    /// The searchable text of an item: title, categories, description, attribute values.
    pub fn text_of(item: &Item) -> String {
        let mut text = format!("{} {}", item.title, item.categories.join(" "));
        if let Some(description) = &item.description {
            text.push(' ');
            text.push_str(description);
        }
        for (key, value) in item.attrs.iter().flatten() {
            text.push(' ');
            text.push_str(key);
            text.push(' ');
            match value {
                serde_json::Value::String(s) => text.push_str(s),
                other => text.push_str(&other.to_string()),
            }
        }
        text
    }

    /// Adds or replaces items (by id). Visible after [`ItemIndex::commit`].
    pub fn upsert<'a>(
        &mut self,
        items: impl IntoIterator<Item = &'a Item>,
    ) -> Result<(), IndexError> {
        let writer = self.writer.as_mut().ok_or(IndexError::ReadOnly)?;
        for item in items {
            writer.delete_term(Term::from_field_text(self.id, &item.item_id));
            let mut document = doc!(
                self.id => item.item_id.as_str(),
                self.text => Self::text_of(item),
                self.fingerprint => Self::fingerprint_of(item),
            );
            for category in &item.categories {
                document.add_text(self.category, category_key(category));
            }
            writer.add_document(document)?;
        }
        Ok(())
    }

    /// Removes every item. Visible after [`ItemIndex::commit`].
    pub fn clear(&mut self) -> Result<(), IndexError> {
        self.writer
            .as_mut()
            .ok_or(IndexError::ReadOnly)?
            .delete_all_documents()?;
        Ok(())
    }

    /// Removes items (by id). Visible after [`ItemIndex::commit`].
    pub fn remove(&mut self, ids: &[String]) -> Result<(), IndexError> {
        let writer = self.writer.as_mut().ok_or(IndexError::ReadOnly)?;
        for id in ids {
            writer.delete_term(Term::from_field_text(self.id, id));
        }
        Ok(())
    }

    /// Makes everything added visible and durable.
    pub fn commit(&mut self) -> Result<(), IndexError> {
        self.writer.as_mut().ok_or(IndexError::ReadOnly)?.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// [`ItemIndex::commit`], recording `payload` (what the index reflects,
    /// e.g. the store offsets) for [`ItemIndex::payload`].
    pub fn commit_with(&mut self, payload: &str) -> Result<(), IndexError> {
        let mut prepared = self
            .writer
            .as_mut()
            .ok_or(IndexError::ReadOnly)?
            .prepare_commit()?;
        prepared.set_payload(payload);
        prepared.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// The payload of the last commit (`None` before any, or after a plain
    /// [`ItemIndex::commit`]).
    pub fn payload(&self) -> Result<Option<String>, IndexError> {
        Ok(self.index.load_metas()?.payload)
    }

    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Picks up the writer's latest commit now (a read-only index also does
    /// so by itself, shortly after each commit).
    pub fn reload(&self) -> Result<(), IndexError> {
        Ok(self.reader.reload()?)
    }

    /// Items filed under any of `categories` (compared as [`category_key`]),
    /// those under more of them first, at most `k`, sorted by id within
    /// each group.
    pub fn in_categories(
        &self,
        categories: &[String],
        k: usize,
    ) -> Result<Vec<(String, usize)>, IndexError> {
        let mut keys: Vec<String> = categories.iter().map(|c| category_key(c)).collect();
        keys.sort();
        keys.dedup();
        if keys.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let mut matches: std::collections::HashMap<String, usize> = Default::default();
        for key in &keys {
            let query = TermQuery::new(
                Term::from_field_text(self.category, key),
                IndexRecordOption::Basic,
            );
            // Bounded work per request, however large the category.
            let limit = TopDocs::with_limit(k.saturating_mul(4)).order_by_score();
            for (_, address) in searcher.search(&query, &limit)? {
                let doc: TantivyDocument = searcher.doc(address)?;
                if let Some(id) = doc.get_first(self.id).and_then(|v| v.as_str()) {
                    *matches.entry(id.to_owned()).or_default() += 1;
                }
            }
        }
        let mut items: Vec<(String, usize)> = matches.into_iter().collect();
        items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        items.truncate(k);
        Ok(items)
    }

    /// Item ids by BM25 against any word of `query`, best first (ties by id).
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<(String, f32)>, IndexError> {
        let terms = words(&self.index, self.text, query);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let query = BooleanQuery::new(
            terms
                .iter()
                .map(|t| {
                    let q: Box<dyn Query> = Box::new(TermQuery::new(
                        Term::from_field_text(self.text, t),
                        IndexRecordOption::WithFreqs,
                    ));
                    (Occur::Should, q)
                })
                .collect(),
        );
        let searcher = self.reader.searcher();
        let mut hits = Vec::new();
        for (score, address) in searcher.search(&query, &TopDocs::with_limit(k).order_by_score())? {
            let doc: TantivyDocument = searcher.doc(address)?;
            let id = doc
                .get_first(self.id)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned();
            hits.push((id, score));
        }
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(hits)
    }
}

//! The memory-entry index.
//!
//! Beside the entries it keeps one marker document per user: the stored
//! `version` of the user's state its entries reflect ([`MemoryIndex::versions`]),
//! committed with them. An owner that finds the index behind the store
//! re-indexes only the users whose version moved, instead of everything.

use crate::{open_reader, open_with_writer, words, IndexError};
use mrrec_memory::{Level, MemoryEntry};
use std::collections::HashMap;
use tantivy::collector::{Count, DocSetCollector, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TantivyDocument, TextFieldIndexing, TextOptions, Value, FAST,
    INDEXED, STORED, STRING,
};
use tantivy::{doc, Index, IndexReader, IndexWriter, Term};

/// Weight of a query word that names the entry's category.
const CATEGORY_BOOST: f32 = 0.5;

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub score: f32,
    pub entry: MemoryEntry,
}

/// A tokenized text field with term frequencies but no positions.
fn words_only() -> TextOptions {
    TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("default")
            .set_index_option(IndexRecordOption::WithFreqs),
    )
}

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    user: Field,
    level: Field,
    category: Field,
    text: Field,
    /// The category as words, so a query naming it favours entries about it.
    topic: Field,
    ts: Field,
    /// Marker documents: the user whose version they record (entries have
    /// no such field, and markers no `user`, so a search never meets one).
    marker: Field,
    marker_user: Field,
    marker_version: Field,
}

/// Memory entries in tantivy.
pub struct MemoryIndex {
    index: Index,
    reader: IndexReader,
    /// `None` when opened read-only.
    writer: Option<IndexWriter>,
    fields: Fields,
    pending: usize,
}

impl MemoryIndex {
    fn schema() -> (Schema, Fields) {
        let mut builder = Schema::builder();
        let fields = Fields {
            id: builder.add_text_field("id", STRING | STORED),
            user: builder.add_text_field("user", STRING | STORED),
            level: builder.add_u64_field("level", INDEXED | FAST | STORED),
            category: builder.add_text_field("category", STRING | STORED),
            // Term frequencies without positions: queries are bags of words.
            text: builder.add_text_field("text", words_only().set_stored()),
            topic: builder.add_text_field("topic", words_only()),
            ts: builder.add_i64_field("ts", STORED),
            marker: builder.add_u64_field("marker", INDEXED),
            marker_user: builder.add_text_field("marker_user", STRING | STORED),
            marker_version: builder.add_text_field("marker_version", STORED),
        };
        (builder.build(), fields)
    }

    /// Opens (or creates) the index in `dir`; `None` keeps it in memory.
    pub fn open(dir: Option<&std::path::Path>) -> Result<Self, IndexError> {
        let (schema, fields) = Self::schema();
        let (index, writer, reader) = open_with_writer(dir, schema, 128 * 1024 * 1024)?;
        Ok(Self {
            index,
            reader,
            writer: Some(writer),
            fields,
            pending: 0,
        })
    }

    /// Opens the index in `dir` for searching only, following the commits of
    /// whoever writes it (a distill stage, maybe in another process).
    pub fn open_read_only(dir: &std::path::Path) -> Result<Self, IndexError> {
        let (schema, fields) = Self::schema();
        let (index, reader) = open_reader(dir, schema)?;
        Ok(Self {
            index,
            reader,
            writer: None,
            fields,
            pending: 0,
        })
    }

    fn writer(&mut self) -> Result<&mut IndexWriter, IndexError> {
        self.writer.as_mut().ok_or(IndexError::ReadOnly)
    }

    /// Adds or replaces entries (by id). Visible after [`MemoryIndex::commit`].
    pub fn upsert<'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a MemoryEntry>,
    ) -> Result<(), IndexError> {
        self.write(entries, true)
    }

    /// Adds entries known to be new (a delete per document is most of the cost
    /// of indexing). Should one be there already, search still returns it once.
    pub fn add<'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a MemoryEntry>,
    ) -> Result<(), IndexError> {
        self.write(entries, false)
    }

    fn write<'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a MemoryEntry>,
        replace: bool,
    ) -> Result<(), IndexError> {
        let f = self.fields;
        let writer = self.writer.as_mut().ok_or(IndexError::ReadOnly)?;
        for entry in entries {
            if replace {
                writer.delete_term(Term::from_field_text(f.id, &entry.id));
            }
            writer.add_document(doc!(
                f.id => entry.id.as_str(),
                f.user => entry.user.as_str(),
                f.level => entry.level.number(),
                f.category => entry.category.as_deref().unwrap_or(""),
                f.text => entry.text.as_str(),
                f.topic => entry.category.as_deref().unwrap_or(""),
                f.ts => entry.ts,
            ))?;
            self.pending += 1;
        }
        Ok(())
    }

    /// Replaces everything indexed for `user` with `entries` (the user's
    /// memory as the store has it now). Visible after [`MemoryIndex::commit`].
    pub fn replace_user<'a>(
        &mut self,
        user: &str,
        entries: impl IntoIterator<Item = &'a MemoryEntry>,
    ) -> Result<(), IndexError> {
        let user_field = self.fields.user;
        self.writer()?
            .delete_term(Term::from_field_text(user_field, user));
        self.write(entries, false)
    }

    /// Records the stored `version` each user's indexed entries reflect
    /// (`None`: the user has none). Visible after the next commit.
    pub fn set_versions<'a>(
        &mut self,
        versions: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    ) -> Result<(), IndexError> {
        let f = self.fields;
        let writer = self.writer()?;
        for (user, version) in versions {
            writer.delete_term(Term::from_field_text(f.marker_user, user));
            if let Some(version) = version {
                writer.add_document(doc!(
                    f.marker => 1u64,
                    f.marker_user => user,
                    f.marker_version => version,
                ))?;
            }
        }
        Ok(())
    }

    /// The version recorded for each user in the committed index.
    pub fn versions(&self) -> Result<HashMap<String, String>, IndexError> {
        let f = self.fields;
        let searcher = self.reader.searcher();
        let mut out = HashMap::new();
        for address in searcher.search(&self.markers(), &DocSetCollector)? {
            let doc: TantivyDocument = searcher.doc(address)?;
            let text = |field| doc.get_first(field).and_then(|v| v.as_str());
            if let (Some(user), Some(version)) = (text(f.marker_user), text(f.marker_version)) {
                out.insert(user.to_owned(), version.to_owned());
            }
        }
        Ok(out)
    }

    /// Every marker document.
    fn markers(&self) -> TermQuery {
        TermQuery::new(
            Term::from_field_u64(self.fields.marker, 1),
            IndexRecordOption::Basic,
        )
    }

    /// Removes a user: every entry and the version marker. Visible after
    /// the next commit.
    pub fn remove_user(&mut self, user: &str) -> Result<(), IndexError> {
        let f = self.fields;
        let writer = self.writer()?;
        writer.delete_term(Term::from_field_text(f.user, user));
        writer.delete_term(Term::from_field_text(f.marker_user, user));
        Ok(())
    }

    /// Removes entries by id. Visible after the next commit.
    pub fn remove(&mut self, ids: &[String]) -> Result<(), IndexError> {
        let id_field = self.fields.id;
        let writer = self.writer()?;
        for id in ids {
            writer.delete_term(Term::from_field_text(id_field, id));
        }
        Ok(())
    }

    /// Entries added since the last commit.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Makes everything added visible and durable, recording `payload`.
    pub fn commit(&mut self, payload: &str) -> Result<(), IndexError> {
        let mut prepared = self.writer()?.prepare_commit()?;
        prepared.set_payload(payload);
        prepared.commit()?;
        self.reader.reload()?;
        self.pending = 0;
        Ok(())
    }

    /// The payload of the last commit.
    pub fn payload(&self) -> Result<Option<String>, IndexError> {
        Ok(self.index.load_metas()?.payload)
    }

    /// Removes every document (before a rebuild).
    pub fn clear(&mut self) -> Result<(), IndexError> {
        self.writer()?.delete_all_documents()?;
        self.pending = 0;
        Ok(())
    }

    /// Entries in the committed index (version markers are not counted).
    pub fn len(&self) -> u64 {
        let searcher = self.reader.searcher();
        let markers = searcher.search(&self.markers(), &Count).unwrap_or(0) as u64;
        searcher.num_docs().saturating_sub(markers)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Picks up the writer's latest commit now (a read-only index also does
    /// so by itself, shortly after each commit).
    pub fn reload(&self) -> Result<(), IndexError> {
        Ok(self.reader.reload()?)
    }

    /// BM25 over `user`'s entries (any word of `query`), restricted to `levels`
    /// (all when empty) and `category` (when given); best first, ties by id.
    /// With no searchable word in `query`, the newest entries come back.
    pub fn search(
        &self,
        user: &str,
        query: &str,
        levels: &[Level],
        category: Option<&str>,
        k: usize,
    ) -> Result<Vec<SearchHit>, IndexError> {
        let f = self.fields;
        let mut must: Vec<(Occur, Box<dyn Query>)> = vec![(
            Occur::Must,
            Box::new(TermQuery::new(
                Term::from_field_text(f.user, user),
                IndexRecordOption::Basic,
            )),
        )];
        if !levels.is_empty() {
            let any_level: Vec<(Occur, Box<dyn Query>)> = levels
                .iter()
                .map(|l| {
                    let q: Box<dyn Query> = Box::new(TermQuery::new(
                        Term::from_field_u64(f.level, l.number()),
                        IndexRecordOption::Basic,
                    ));
                    (Occur::Should, q)
                })
                .collect();
            must.push((Occur::Must, Box::new(BooleanQuery::new(any_level))));
        }
        if let Some(category) = category {
            must.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(f.category, category),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        let terms = words(&self.index, f.text, query);
        let text: Box<dyn Query> = if terms.is_empty() {
            Box::new(AllQuery)
        } else {
            let mut any: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            for t in &terms {
                any.push((
                    Occur::Should,
                    Box::new(TermQuery::new(
                        Term::from_field_text(f.text, t),
                        IndexRecordOption::WithFreqs,
                    )),
                ));
                // An entry whose category the query names ranks above one that
                // merely mentions it.
                any.push((
                    Occur::Should,
                    Box::new(BoostQuery::new(
                        Box::new(TermQuery::new(
                            Term::from_field_text(f.topic, t),
                            IndexRecordOption::Basic,
                        )),
                        CATEGORY_BOOST,
                    )),
                ));
            }
            Box::new(BooleanQuery::new(any))
        };
        must.push((Occur::Must, text));
        // The filter clauses add the same score to every document that passes
        // them, so only the text clause orders the hits.
        let query = BooleanQuery::new(must);
        let searcher = self.reader.searcher();
        let top = searcher.search(&query, &TopDocs::with_limit(k.max(1) * 4).order_by_score())?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher.doc(address)?;
            let text_of = |field: Field| {
                doc.get_first(field)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_owned()
            };
            let level = doc
                .get_first(f.level)
                .and_then(|v| v.as_u64())
                .and_then(Level::from_number)
                .unwrap_or(Level::Behavior);
            let category = text_of(f.category);
            hits.push(SearchHit {
                score,
                entry: MemoryEntry {
                    id: text_of(f.id),
                    user: text_of(f.user),
                    level,
                    category: (!category.is_empty()).then_some(category),
                    text: text_of(f.text),
                    ts: doc.get_first(f.ts).and_then(|v| v.as_i64()).unwrap_or(0),
                    // The index keeps what retrieval shows; the items
                    // behind an entry are read from the store.
                    items: Vec::new(),
                },
            });
        }
        if terms.is_empty() {
            hits.sort_by(|a, b| {
                b.entry
                    .ts
                    .cmp(&a.entry.ts)
                    .then_with(|| a.entry.id.cmp(&b.entry.id))
            });
        } else {
            hits.sort_by(|a, b| {
                b.score
                    .total_cmp(&a.score)
                    .then_with(|| a.entry.id.cmp(&b.entry.id))
            });
        }
        // An entry indexed twice (an event delivered twice) counts once.
        let mut seen = std::collections::HashSet::new();
        hits.retain(|hit| seen.insert(hit.entry.id.clone()));
        hits.truncate(k);
        Ok(hits)
    }
}

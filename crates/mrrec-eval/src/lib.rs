//! DESIGN §11's quality protocol, the parts that are not the pipeline: the
//! ranking metrics (Recall@10/100, NDCG@10/100 of one target per request,
//! full ranking, ties by item id) and the baselines a recommender-systems
//! engineer compares against — popularity, genre popularity, item-kNN,
//! BM25 of the query, BM25 of the query plus recent history, and their
//! z-scored hybrid. `mrrec eval` adds the pipeline's rows, measured through
//! the topics. [`plot`] draws its learning curve.

pub mod baselines;
pub mod data;
pub mod metrics;
pub mod plot;

pub use baselines::{Baselines, Case, Interaction, BASELINES};
pub use data::{DataError, EvalData, EvalRequest, Split};
pub use metrics::{bootstrap, ndcg_at_10, rank_of, Interval, Metrics, Row, VsRule};
pub use plot::{CurvePoint, PlotError, Reference};

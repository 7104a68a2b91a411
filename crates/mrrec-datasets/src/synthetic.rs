//! A seeded synthetic world with taste structure, for `mrrec demo` without a
//! dataset: items belong to one or two of eight categories and their titles
//! are made of that category's words (so a recommendation can be checked by
//! eye: "Haunted Crypt" is horror); every user has one or two favourite
//! categories, rates mostly popular items of those highly and the rest low.

use crate::Dataset;
use mrrec_messages::{Event, EventKind, Item};

/// Categories and the words their titles are made of.
pub const CATEGORIES: [(&str, [&str; 8]); 8] = [
    (
        "Sci-Fi",
        [
            "Star", "Galaxy", "Robot", "Orbit", "Android", "Nebula", "Quantum", "Mars",
        ],
    ),
    (
        "Romance",
        [
            "Love",
            "Heart",
            "Kiss",
            "Wedding",
            "Paris",
            "Forever",
            "Darling",
            "Moonlight",
        ],
    ),
    (
        "Horror",
        [
            "Haunted", "Blood", "Curse", "Shadow", "Crypt", "Scream", "Zombie", "Witch",
        ],
    ),
    (
        "Comedy",
        [
            "Crazy",
            "Party",
            "Goofy",
            "Prank",
            "Oops",
            "Silly",
            "Vacation",
            "Roommates",
        ],
    ),
    (
        "Western",
        [
            "Outlaw", "Canyon", "Sheriff", "Saloon", "Frontier", "Rider", "Gold", "Dust",
        ],
    ),
    (
        "Documentary",
        [
            "Planet", "Ocean", "History", "Journey", "Inside", "Nature", "Secrets", "Wild",
        ],
    ),
    (
        "Animation",
        [
            "Bunny", "Dragon", "Toy", "Magic", "Puppy", "Castle", "Balloon", "Fairy",
        ],
    ),
    (
        "Thriller",
        [
            "Heist",
            "Spy",
            "Conspiracy",
            "Chase",
            "Target",
            "Agent",
            "Ransom",
            "Code",
        ],
    ),
];

/// Size of a synthetic world.
#[derive(Debug, Clone, Copy)]
pub struct WorldSize {
    pub items: usize,
    pub users: usize,
    /// Ratings per user, at least (up to twice as many).
    pub ratings_per_user: usize,
}

impl Default for WorldSize {
    fn default() -> Self {
        Self {
            items: 600,
            users: 300,
            ratings_per_user: 20,
        }
    }
}

/// xorshift64*: deterministic, dependency-free (the seed must not be 0).
/// Shared by the synthetic world and the benchmarks' generated load.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The world for `seed`: items, then `profile` events and ratings in time
/// order (a [`Dataset`], so DESIGN §11's [`crate::split`] applies).
pub fn world(seed: u64, size: WorldSize) -> Dataset {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut by_category: Vec<Vec<usize>> = vec![Vec::new(); CATEGORIES.len()];
    // Popularity falls off as 1/rank within the catalog (Zipf-like).
    let mut weight = Vec::with_capacity(size.items);
    let items: Vec<Item> = (0..size.items)
        .map(|i| {
            let primary = rng.below(CATEGORIES.len());
            let (name, words) = CATEGORIES[primary];
            let mut categories = vec![name.to_owned()];
            by_category[primary].push(i);
            if rng.below(4) == 0 {
                let second = rng.below(CATEGORIES.len());
                if second != primary {
                    categories.push(CATEGORIES[second].0.to_owned());
                    by_category[second].push(i);
                }
            }
            let (a, b) = (words[rng.below(8)], words[rng.below(8)]);
            let title = if a == b {
                format!("The {a}")
            } else {
                format!("{a} {b}")
            };
            let year = 1960 + rng.below(60);
            weight.push(1.0 / (1.0 + rng.below(size.items) as f64));
            Item {
                item_id: format!("m{i}"),
                title: format!("{title} ({year})"),
                categories,
                description: None,
                attrs: serde_json::json!({ "year": year }).as_object().cloned(),
            }
        })
        .collect();
    let pick = |rng: &mut Rng, pool: &[usize], weight: &[f64]| -> usize {
        let total: f64 = pool.iter().map(|i| weight[*i]).sum();
        let mut x = rng.unit() * total;
        for i in pool {
            x -= weight[*i];
            if x <= 0.0 {
                return *i;
            }
        }
        pool[pool.len() - 1]
    };
    let all: Vec<usize> = (0..size.items).collect();
    let start = 1_700_000_000_000i64;
    let mut events = Vec::new();
    let mut ratings = Vec::new();
    for u in 0..size.users {
        let user = format!("u{u}");
        let mut favourites = vec![rng.below(CATEGORIES.len())];
        if rng.below(2) == 0 {
            let second = rng.below(CATEGORIES.len());
            if second != favourites[0] {
                favourites.push(second);
            }
        }
        events.push(Event {
            event_id: format!("{user}-profile"),
            user_id: user.clone(),
            kind: EventKind::Profile,
            item_id: None,
            value: None,
            text: None,
            attrs: serde_json::json!({ "age": 18 + rng.below(50) })
                .as_object()
                .cloned(),
            ts: start,
        });
        let n = size.ratings_per_user + rng.below(size.ratings_per_user + 1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..n {
            let liked = rng.below(5) != 0;
            let item = if liked {
                let f = favourites[rng.below(favourites.len())];
                pick(&mut rng, &by_category[f], &weight)
            } else {
                pick(&mut rng, &all, &weight)
            };
            if !seen.insert(item) {
                continue;
            }
            let in_taste = favourites
                .iter()
                .any(|f| by_category[*f].binary_search(&item).is_ok());
            let value = if in_taste {
                4.0 + rng.below(2) as f64
            } else {
                1.0 + rng.below(3) as f64
            };
            ratings.push(Event {
                event_id: format!("{user}-r{}", ratings.len()),
                user_id: user.clone(),
                kind: EventKind::Rate,
                item_id: Some(items[item].item_id.clone()),
                value: Some(value),
                text: None,
                attrs: None,
                ts: start + 1000 + rng.below(30 * 86_400_000) as i64,
            });
        }
    }
    ratings.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.event_id.cmp(&b.event_id)));
    events.extend(ratings);
    Dataset { items, events }
}

/// The favourite categories a user's ratings ≥ 4 show, most frequent first.
pub fn liked_categories(dataset: &Dataset, user: &str) -> Vec<String> {
    let categories: std::collections::HashMap<&str, &[String]> = dataset
        .items
        .iter()
        .map(|i| (i.item_id.as_str(), i.categories.as_slice()))
        .collect();
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in &dataset.events {
        if e.user_id == user && e.value.is_some_and(|v| v >= 4.0) {
            for c in e
                .item_id
                .as_deref()
                .and_then(|i| categories.get(i))
                .copied()
                .unwrap_or_default()
            {
                *counts.entry(c.as_str()).or_default() += 1;
            }
        }
    }
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    ranked.into_iter().map(|(c, _)| c.to_owned()).collect()
}

/// The categories of [`bench_world`].
pub const BENCH_CATEGORIES: [&str; 12] = [
    "Action",
    "Comedy",
    "Drama",
    "Horror",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "Documentary",
    "Animation",
    "Crime",
    "Western",
    "Musical",
];

/// The benches' world: a synthetic catalog (2,000 items in 1–3 of 12 categories) and `events`
/// ratings 1–5 by ~events/50 users, deterministic in `seed`.
pub fn bench_world(seed: u64, events: usize) -> (Vec<Item>, Vec<Event>) {
    let mut rng = Rng(seed.max(1));
    let items: Vec<Item> = (0..2000)
        .map(|i| {
            let n = 1 + rng.below(3);
            let categories: Vec<String> = (0..n)
                .map(|_| BENCH_CATEGORIES[rng.below(BENCH_CATEGORIES.len())].to_owned())
                .collect();
            let mut categories = categories;
            categories.sort();
            categories.dedup();
            Item {
                item_id: format!("i{i}"),
                title: format!("Item {i} ({})", 1950 + rng.below(70)),
                categories,
                description: None,
                attrs: serde_json::json!({"year": 1950 + rng.below(70)})
                    .as_object()
                    .cloned(),
            }
        })
        .collect();
    let users = (events / 50).max(1) as u64;
    let events = (0..events)
        .map(|i| {
            let user = format!("u{}", rng.below(users as usize));
            Event {
                event_id: format!("e{i}"),
                user_id: user,
                kind: EventKind::Rate,
                item_id: Some(format!("i{}", rng.below(items.len()))),
                value: Some(1.0 + rng.below(5) as f64),
                text: None,
                attrs: None,
                ts: 1_700_000_000_000 + i as i64 * 1000,
            }
        })
        .collect();
    (items, events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_world_is_deterministic_and_has_taste() {
        let a = world(7, WorldSize::default());
        let b = world(7, WorldSize::default());
        assert_eq!(a.events.len(), b.events.len());
        assert!(a.events.iter().zip(&b.events).all(|(x, y)| x == y));
        assert!(a.items.iter().zip(&b.items).all(|(x, y)| x == y));
        assert_ne!(world(8, WorldSize::default()).events, a.events);
        // Titles speak for their first category.
        for item in &a.items {
            let (_, words) = CATEGORIES
                .iter()
                .find(|(c, _)| *c == item.categories[0])
                .expect("a known category");
            assert!(
                words.iter().any(|w| item.title.contains(w)),
                "{}",
                item.title
            );
        }
        // Users rate their favourite categories high: a user's top liked
        // category covers most of their ratings ≥ 4.
        let split = crate::split(&a);
        assert!(
            split.users.len() > 250,
            "{} users with targets",
            split.users.len()
        );
        let mut dominant = 0;
        for u in 0..50 {
            let user = format!("u{u}");
            let liked = liked_categories(&a, &user);
            let top = liked.first().expect("every user likes something");
            let positives: Vec<&Event> = a
                .events
                .iter()
                .filter(|e| e.user_id == user && e.value.is_some_and(|v| v >= 4.0))
                .collect();
            let in_top = positives
                .iter()
                .filter(|e| {
                    a.items
                        .iter()
                        .find(|i| Some(&i.item_id) == e.item_id.as_ref())
                        .is_some_and(|i| i.categories.contains(top))
                })
                .count();
            if in_top * 2 >= positives.len() {
                dominant += 1;
            }
        }
        assert!(
            dominant >= 40,
            "{dominant} of 50 users have a dominant taste"
        );
        // Events are in time order.
        assert!(a.events.windows(2).all(|w| w[0].ts <= w[1].ts));
    }
}

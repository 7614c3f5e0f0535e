//! Splits a stage's input into tasks. A pure function from the input's layout (files, their
//! row groups' row counts and uncompressed bytes) to a plan, with no I/O, so it can be
//! tested on any layout. Tasks address row-group ranges of the input files as they are (the
//! corpus is never rewritten), hold about `target_bytes` of input each, and never mix row
//! groups of different length classes, so a row group of long scripts does not stall a
//! batch of short ones. Inside a task the executor orders scripts by length.

use serde::{Deserialize, Serialize};

/// One row group's size, as the file footer states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowGroupStats {
    pub rows: u64,
    pub bytes: u64,
}

/// One input file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFile {
    pub path: String,
    pub row_groups: Vec<RowGroupStats>,
}

impl From<&automaldesc_common::parquet_io::FileLayout> for InputFile {
    fn from(l: &automaldesc_common::parquet_io::FileLayout) -> Self {
        Self {
            path: l.path.to_string(),
            row_groups: l
                .row_group_rows
                .iter()
                .zip(&l.row_group_bytes)
                .map(|(&rows, &bytes)| RowGroupStats { rows, bytes })
                .collect(),
        }
    }
}

/// Row groups `start..end` of one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowGroupRange {
    pub file: String,
    pub start: usize,
    pub end: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskPlan {
    pub ranges: Vec<RowGroupRange>,
    pub rows: u64,
    pub bytes: u64,
    /// See [`length_class`].
    pub length_class: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    /// Input bytes a task aims at; a single row group above it is a task of its own.
    pub target_bytes: u64,
}

/// The class of a row group by its mean row size: under 1 KiB, under 4 KiB, under 16 KiB,
/// and above (the size buckets of the published corpus).
pub fn length_class(g: RowGroupStats) -> u8 {
    let mean = g.bytes / g.rows.max(1);
    match mean {
        0..1024 => 0,
        1024..4096 => 1,
        4096..16384 => 2,
        _ => 3,
    }
}

/// Every row group with at least one row goes into exactly one task. Within a length class,
/// row groups are taken in file order and packed until the next one would pass the target;
/// adjacent row groups of one file merge into one range.
impl TaskPlan {
    fn empty(length_class: u8) -> Self {
        TaskPlan {
            ranges: Vec::new(),
            rows: 0,
            bytes: 0,
            length_class,
        }
    }

    /// Adds row group `i` of `file`, extending the last range when it is adjacent.
    fn add(&mut self, file: &str, i: usize, g: &RowGroupStats) {
        match self.ranges.last_mut() {
            Some(r) if r.file == file && r.end == i => r.end = i + 1,
            _ => self.ranges.push(RowGroupRange {
                file: file.to_string(),
                start: i,
                end: i + 1,
            }),
        }
        self.rows += g.rows;
        self.bytes += g.bytes;
    }
}

/// Every non-empty row group of `files` as one task (no task when there are none).
pub fn plan_single(files: &[InputFile]) -> Vec<TaskPlan> {
    let mut task = TaskPlan::empty(0);
    for file in files {
        for (i, g) in file.row_groups.iter().enumerate() {
            if g.rows == 0 {
                continue;
            }
            task.add(&file.path, i, g);
        }
    }
    if task.ranges.is_empty() {
        Vec::new()
    } else {
        vec![task]
    }
}

pub fn plan(files: &[InputFile], opts: PlanOptions) -> Vec<TaskPlan> {
    let mut done = Vec::new();
    let mut open: [Option<TaskPlan>; 4] = Default::default();
    for file in files {
        for (i, &g) in file.row_groups.iter().enumerate() {
            if g.rows == 0 {
                continue;
            }
            let class = length_class(g);
            let slot = &mut open[class as usize];
            if slot
                .as_ref()
                .is_some_and(|t| t.bytes + g.bytes > opts.target_bytes)
            {
                done.extend(slot.take());
            }
            let task = slot.get_or_insert_with(|| TaskPlan::empty(class));
            task.add(&file.path, i, &g);
        }
    }
    done.extend(open.into_iter().flatten());
    done
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::{Rng, SeedableRng};

    use super::*;

    fn random_layout(rng: &mut impl Rng) -> Vec<InputFile> {
        (0..rng.random_range(0..6))
            .map(|f| InputFile {
                path: format!("corpus/part-{f:05}.parquet"),
                row_groups: (0..rng.random_range(0..12))
                    .map(|_| {
                        let rows = if rng.random_bool(0.1) {
                            0
                        } else {
                            rng.random_range(1..500)
                        };
                        let mean = [300u64, 2000, 9000, 60000][rng.random_range(0..4)];
                        RowGroupStats {
                            rows,
                            bytes: rows * rng.random_range(mean / 2..mean * 2),
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn a_single_task_holds_every_non_empty_row_group_once() {
        let f = |path: &str, groups: &[(u64, u64)]| InputFile {
            path: path.into(),
            row_groups: groups
                .iter()
                .map(|&(rows, bytes)| RowGroupStats { rows, bytes })
                .collect(),
        };
        let files = [
            f("a", &[(10, 100), (0, 0), (5, 50_000)]),
            f("b", &[(3, 30)]),
        ];
        let tasks = plan_single(&files);
        assert_eq!(tasks.len(), 1);
        let t = &tasks[0];
        assert_eq!((t.rows, t.bytes), (18, 50_130));
        let ranges: Vec<(&str, usize, usize)> = t
            .ranges
            .iter()
            .map(|r| (r.file.as_str(), r.start, r.end))
            .collect();
        assert_eq!(ranges, [("a", 0, 1), ("a", 2, 3), ("b", 0, 1)]);
        assert!(plan_single(&[f("c", &[(0, 0)])]).is_empty());
    }

    #[test]
    fn every_row_group_is_in_exactly_one_task() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        for case in 0..500 {
            let files = random_layout(&mut rng);
            let opts = PlanOptions {
                target_bytes: rng.random_range(1_000..5_000_000),
            };
            let tasks = plan(&files, opts);
            assert_eq!(tasks, plan(&files, opts), "case {case}: deterministic");

            let mut seen: BTreeMap<(String, usize), usize> = BTreeMap::new();
            for t in &tasks {
                let mut rows = 0;
                let mut bytes = 0;
                let mut groups = 0;
                for r in &t.ranges {
                    assert!(r.start < r.end, "case {case}: empty range");
                    let file = files.iter().find(|f| f.path == r.file).unwrap();
                    for i in r.start..r.end {
                        *seen.entry((r.file.clone(), i)).or_default() += 1;
                        let g = file.row_groups[i];
                        assert_eq!(
                            length_class(g),
                            t.length_class,
                            "case {case}: one class per task"
                        );
                        rows += g.rows;
                        bytes += g.bytes;
                        groups += 1;
                    }
                }
                assert_eq!((rows, bytes), (t.rows, t.bytes), "case {case}: totals");
                assert!(
                    t.bytes <= opts.target_bytes || groups == 1,
                    "case {case}: {} bytes in {groups} row groups over target {}",
                    t.bytes,
                    opts.target_bytes
                );
            }
            for f in &files {
                for (i, g) in f.row_groups.iter().enumerate() {
                    let n = seen.get(&(f.path.clone(), i)).copied().unwrap_or(0);
                    assert_eq!(
                        n,
                        usize::from(g.rows > 0),
                        "case {case}: {} group {i}",
                        f.path
                    );
                }
            }
        }
    }

    #[test]
    fn adjacent_row_groups_merge_and_classes_stay_apart() {
        let short = RowGroupStats {
            rows: 10,
            bytes: 5_000,
        };
        let long = RowGroupStats {
            rows: 2,
            bytes: 100_000,
        };
        let files = vec![InputFile {
            path: "f".into(),
            row_groups: vec![short, short, long, short, short, short],
        }];
        let tasks = plan(
            &files,
            PlanOptions {
                target_bytes: 15_000,
            },
        );
        let ranges: Vec<Vec<(usize, usize)>> = tasks
            .iter()
            .map(|t| t.ranges.iter().map(|r| (r.start, r.end)).collect())
            .collect();
        assert_eq!(
            ranges,
            vec![vec![(0, 2), (3, 4)], vec![(4, 6)], vec![(2, 3)]]
        );
        assert_eq!(tasks[2].length_class, 3);
    }
}

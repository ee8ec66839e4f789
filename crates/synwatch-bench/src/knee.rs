//! The knee: the highest rate at which recall stays at least `min_recall` of the best.
//!
//! Each step (one requested rate) has several repetitions; a step's figure is the median of
//! its repetitions, so one unlucky run neither makes nor breaks a step. Recall is the step's
//! open ports found over the reference: the known ground truth in the lab, else the best step's
//! median. "Stays" is read strictly: the knee is the last step of the leading run of steps that
//! all meet the threshold, so a dip at a lower rate is never hidden by a lucky higher one (the
//! recommended `max_rate` must be safe, not optimistic).
//!
//! * Every step meets it (a flat curve): the knee is the highest rate tried and
//!   [`Knee::bent`] is false: the ceiling is above the range, try higher rates.
//! * Even the lowest step misses it: there is no knee ([`Knee::rate`] is `None`): try lower
//!   rates (or the path loses packets whatever the rate).

/// What one step found.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    /// The requested rate, packets per second.
    pub requested: u64,
    /// Open ports found by each repetition.
    pub found: Vec<u64>,
}

/// One step as judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRecall {
    /// The requested rate.
    pub requested: u64,
    /// The median of the repetitions' open ports found.
    pub found: u64,
    /// `found` over the reference (0 to 1).
    pub recall: f64,
    /// Whether the step meets `min_recall`.
    pub meets: bool,
}

/// The knee of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Knee {
    /// The recommended `max_rate` (none: even the lowest rate lost answers).
    pub rate: Option<u64>,
    /// Whether a step above the knee missed the threshold (false: the curve stayed flat over
    /// the whole range and the real knee is higher).
    pub bent: bool,
    /// The open ports recall is measured against.
    pub reference: u64,
    /// Every step, sorted by requested rate.
    pub steps: Vec<StepRecall>,
}

fn median(values: &[u64]) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => 0,
        length if length % 2 == 1 => sorted[length / 2],
        length => (sorted[length / 2 - 1] + sorted[length / 2]) / 2,
    }
}

/// Finds the knee of `steps` (any order), against `ground_truth` open ports when known, with
/// `min_recall` as a fraction (0.999 for 99.9 %).
pub fn find_knee(steps: &[StepResult], ground_truth: Option<u64>, min_recall: f64) -> Knee {
    let mut medians: Vec<(u64, u64)> = steps.iter().map(|step| (step.requested, median(&step.found))).collect();
    medians.sort_unstable();
    let reference = ground_truth.unwrap_or_else(|| medians.iter().map(|(_, found)| *found).max().unwrap_or(0));
    let judged: Vec<StepRecall> = medians
        .iter()
        .map(|&(requested, found)| {
            // Nothing to find means nothing can be lost.
            let recall = if reference == 0 { 1.0 } else { found as f64 / reference as f64 };
            StepRecall { requested, found, recall, meets: recall + 1e-12 >= min_recall }
        })
        .collect();
    let leading = judged.iter().take_while(|step| step.meets).count();
    Knee {
        rate: leading.checked_sub(1).map(|last| judged[last].requested),
        bent: leading > 0 && leading < judged.len(),
        reference,
        steps: judged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(requested: u64, found: &[u64]) -> StepResult {
        StepResult { requested, found: found.to_vec() }
    }

    #[test]
    fn a_clean_curve_bends_where_recall_first_drops() {
        let steps = [
            step(400_000, &[9_200, 9_150, 9_300]),
            step(10_000, &[10_000, 10_000, 10_000]),
            step(200_000, &[9_995, 9_991, 9_999]),
            step(100_000, &[10_000, 9_999, 10_000]),
        ];
        let knee = find_knee(&steps, None, 0.999);
        assert_eq!((knee.rate, knee.bent, knee.reference), (Some(200_000), true, 10_000));
        assert_eq!(
            knee.steps.iter().map(|step| step.requested).collect::<Vec<_>>(),
            [10_000, 100_000, 200_000, 400_000]
        );
        assert!(!knee.steps[3].meets);
        // Against the lab's ground truth (10,010 open), 200k (9,995) misses 99.9 % too.
        let truth = find_knee(&steps, Some(10_010), 0.999);
        assert_eq!(truth.rate, Some(100_000));
        assert!((truth.steps[1].recall - 10_000.0 / 10_010.0).abs() < 1e-9);
    }

    #[test]
    fn noise_in_one_repetition_does_not_move_the_knee() {
        // One bad run at 100k (a scheduling hiccup) and one lucky run at 800k.
        let steps = [
            step(50_000, &[5_000, 5_000, 5_000]),
            step(100_000, &[5_000, 3_100, 5_000]),
            step(200_000, &[5_000, 4_999, 5_000]),
            step(400_000, &[4_700, 4_650, 4_720]),
            step(800_000, &[3_000, 5_000, 3_100]),
        ];
        let knee = find_knee(&steps, None, 0.999);
        assert_eq!((knee.rate, knee.bent), (Some(200_000), true));
    }

    #[test]
    fn a_lucky_high_step_never_hides_a_dip_below_it() {
        let steps = [step(10_000, &[100]), step(20_000, &[90]), step(40_000, &[100])];
        assert_eq!(find_knee(&steps, None, 0.999).rate, Some(10_000));
    }

    #[test]
    fn flat_and_hopeless_curves_say_so() {
        let flat = [step(10_000, &[500, 500]), step(20_000, &[500, 500]), step(40_000, &[500, 500])];
        let knee = find_knee(&flat, None, 0.999);
        assert_eq!((knee.rate, knee.bent), (Some(40_000), false), "the ceiling is above the range");
        let hopeless = [step(10_000, &[400]), step(20_000, &[380])];
        let knee = find_knee(&hopeless, Some(500), 0.999);
        assert_eq!((knee.rate, knee.bent), (None, false));
        // Nothing open anywhere: nothing can be lost, the curve is flat.
        let empty = [step(10_000, &[0]), step(20_000, &[0])];
        assert_eq!(find_knee(&empty, None, 0.999).rate, Some(20_000));
        assert_eq!(find_knee(&[], None, 0.999), Knee { rate: None, bent: false, reference: 0, steps: Vec::new() });
        // A looser threshold moves the knee up.
        let steps = [step(10_000, &[1_000]), step(20_000, &[995]), step(40_000, &[950])];
        assert_eq!(find_knee(&steps, None, 0.999).rate, Some(10_000));
        assert_eq!(find_knee(&steps, None, 0.99).rate, Some(20_000));
        assert_eq!(find_knee(&steps, None, 0.95).rate, Some(40_000));
    }
}

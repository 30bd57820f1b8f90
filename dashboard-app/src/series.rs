//! A fixed-capacity ring buffer and the time series the charts draw from it.

use std::collections::VecDeque;

/// Keeps the last `capacity` values; pushing onto a full ring drops the oldest.
#[derive(Clone, Debug, PartialEq)]
pub struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> Ring<T> {
    /// A ring holding at most `capacity` values (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            items: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub fn push(&mut self, v: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
        }
        self.items.push_back(v);
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.items.iter()
    }

    pub fn last(&self) -> Option<&T> {
        self.items.back()
    }

    pub fn first(&self) -> Option<&T> {
        self.items.front()
    }

    pub fn clear(&mut self) {
        self.items.clear();
    }
}

/// One value per snapshot, `None` where there was nothing to measure (e.g. a latency
/// percentile over an interval without requests), which the chart draws as a gap.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    points: Ring<Option<f64>>,
}

impl Series {
    pub fn new(capacity: usize) -> Self {
        Self {
            points: Ring::new(capacity),
        }
    }

    pub fn push(&mut self, v: Option<f64>) {
        self.points.push(v.filter(|v| v.is_finite()));
    }

    /// Oldest first.
    pub fn values(&self) -> Vec<Option<f64>> {
        self.points.iter().copied().collect()
    }

    pub fn capacity(&self) -> usize {
        self.points.capacity()
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Largest value present (0 when there is none).
    pub fn max(&self) -> f64 {
        self.points
            .iter()
            .flatten()
            .fold(0.0, |m: f64, v| m.max(*v))
    }

    pub fn last(&self) -> Option<f64> {
        self.points.last().copied().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_drops_the_oldest() {
        let mut r = Ring::new(3);
        assert!(r.is_empty());
        for i in 1..=5 {
            r.push(i);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(r.first(), Some(&3));
        assert_eq!(r.last(), Some(&5));
        r.clear();
        assert!(r.is_empty());
        assert_eq!(Ring::<u8>::new(0).capacity(), 1, "never zero-sized");
    }

    #[test]
    fn series_keeps_gaps_and_ignores_non_finite() {
        let mut s = Series::new(4);
        s.push(Some(1.0));
        s.push(None);
        s.push(Some(f64::NAN));
        s.push(Some(3.0));
        s.push(Some(2.0));
        assert_eq!(s.values(), vec![None, None, Some(3.0), Some(2.0)]);
        assert_eq!(s.max(), 3.0);
        assert_eq!(s.last(), Some(2.0));
        assert_eq!(Series::new(2).max(), 0.0);
    }
}

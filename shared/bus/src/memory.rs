//! In-process bus with Kafka's semantics: topics with partitions, keyed
//! partitioning, consumer groups that split partitions among members and
//! rebalance when members come and go, and committed offsets per group, so a
//! record that was not acknowledged is delivered again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::{
    Bus, BusError, Delivery, Headers, OutboundRecord, PartitionLag, Subscription, TopicSpec,
};

#[derive(Debug, Clone)]
struct StoredRecord {
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Headers,
}

type PartitionId = (String, i32);

#[derive(Debug, Default)]
struct Group {
    /// Member id -> subscribed topics.
    members: Vec<(u64, Vec<String>)>,
    assignment: HashMap<u64, Vec<PartitionId>>,
    committed: HashMap<PartitionId, i64>,
    generation: u64,
}

#[derive(Debug, Default)]
struct State {
    topics: HashMap<String, Vec<Vec<StoredRecord>>>,
    groups: HashMap<String, Group>,
    next_member: u64,
    round_robin: u64,
}

impl State {
    /// Splits each topic's partitions round-robin among the members subscribed to it.
    fn rebalance(&mut self, group_name: &str) {
        let topics = &self.topics;
        let Some(group) = self.groups.get_mut(group_name) else {
            return;
        };
        let mut assignment: HashMap<u64, Vec<PartitionId>> = group
            .members
            .iter()
            .map(|(id, _)| (*id, Vec::new()))
            .collect();
        let mut all_topics: Vec<&String> = group.members.iter().flat_map(|(_, t)| t).collect();
        all_topics.sort();
        all_topics.dedup();
        for topic in all_topics {
            let partitions = topics.get(topic).map_or(0, Vec::len) as i32;
            let members: Vec<u64> = group
                .members
                .iter()
                .filter(|(_, t)| t.contains(topic))
                .map(|(id, _)| *id)
                .collect();
            for partition in 0..partitions {
                let member = members[partition as usize % members.len()];
                if let Some(list) = assignment.get_mut(&member) {
                    list.push((topic.clone(), partition));
                }
            }
        }
        group.assignment = assignment;
        group.generation += 1;
    }
}

/// An in-process bus. Clones share the same topics and groups.
#[derive(Debug, Clone, Default)]
pub struct MemoryBus {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in
        // a way that matters more than losing the bus, so recover the guard.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// FNV-1a: stable across runs and platforms, so a key always maps to one partition.
fn partition_for(key: &[u8], partitions: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % partitions as u64) as usize
}

#[async_trait]
impl Bus for MemoryBus {
    async fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), BusError> {
        let mut state = self.lock();
        for spec in topics {
            if spec.partitions < 1 {
                return Err(BusError::CreateTopic {
                    topic: spec.name.clone(),
                    detail: format!("{} partitions; at least 1 is needed", spec.partitions),
                });
            }
            state
                .topics
                .entry(spec.name.clone())
                .or_insert_with(|| vec![Vec::new(); spec.partitions as usize]);
        }
        // Groups already subscribed to a new topic pick up its partitions.
        let groups: Vec<String> = state.groups.keys().cloned().collect();
        for group in groups {
            state.rebalance(&group);
        }
        drop(state);
        self.changed.notify_waiters();
        Ok(())
    }

    async fn publish(&self, record: OutboundRecord) -> Result<(), BusError> {
        let mut state = self.lock();
        let round_robin = state.round_robin;
        state.round_robin += 1;
        let partitions =
            state
                .topics
                .get_mut(&record.topic)
                .ok_or_else(|| BusError::UnknownTopic {
                    topic: record.topic.clone(),
                })?;
        let index = if record.key.is_empty() {
            (round_robin % partitions.len() as u64) as usize
        } else {
            partition_for(&record.key, partitions.len())
        };
        partitions[index].push(StoredRecord {
            key: record.key,
            payload: record.payload,
            headers: record.headers,
        });
        drop(state);
        self.changed.notify_waiters();
        Ok(())
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, BusError> {
        let mut state = self.lock();
        if let Some(missing) = topics.iter().find(|t| !state.topics.contains_key(*t)) {
            return Err(BusError::UnknownTopic {
                topic: missing.clone(),
            });
        }
        let member = state.next_member;
        state.next_member += 1;
        state
            .groups
            .entry(group.to_owned())
            .or_default()
            .members
            .push((member, topics.to_vec()));
        state.rebalance(group);
        drop(state);
        self.changed.notify_waiters();
        Ok(Box::new(MemorySubscription {
            bus: self.clone(),
            group: group.to_owned(),
            member,
            generation: u64::MAX,
            assigned: Vec::new(),
            positions: HashMap::new(),
            cursor: 0,
            paused: false,
        }))
    }
}

struct MemorySubscription {
    bus: MemoryBus,
    group: String,
    member: u64,
    /// Generation of the assignment below; a new one resets positions to the
    /// committed offsets, as a Kafka rebalance does.
    generation: u64,
    assigned: Vec<PartitionId>,
    positions: HashMap<PartitionId, i64>,
    /// Where to start looking next, so partitions are served in turn.
    cursor: usize,
    /// While paused nothing is delivered (as a paused Kafka consumer).
    paused: bool,
}

impl MemorySubscription {
    fn poll(&mut self) -> Option<Delivery> {
        if self.paused {
            return None;
        }
        let state = self.bus.lock();
        let group = state.groups.get(&self.group)?;
        if group.generation != self.generation {
            self.generation = group.generation;
            self.assigned = group
                .assignment
                .get(&self.member)
                .cloned()
                .unwrap_or_default();
            self.positions = self
                .assigned
                .iter()
                .map(|p| (p.clone(), group.committed.get(p).copied().unwrap_or(0)))
                .collect();
        }
        let count = self.assigned.len();
        for step in 0..count {
            let index = (self.cursor + step) % count;
            let id = &self.assigned[index];
            let position = self.positions.get(id).copied().unwrap_or(0);
            let log = state.topics.get(&id.0).and_then(|p| p.get(id.1 as usize))?;
            if let Some(record) = log.get(position as usize) {
                self.positions.insert(id.clone(), position + 1);
                self.cursor = index + 1;
                return Some(Delivery {
                    topic: id.0.clone(),
                    partition: id.1,
                    offset: position,
                    key: record.key.clone(),
                    payload: record.payload.clone(),
                    headers: record.headers.clone(),
                });
            }
        }
        None
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            // Register for wake-ups before looking, so a publish between the
            // look and the wait is not missed.
            let changed = self.bus.changed.clone();
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(delivery) = self.poll() {
                return Ok(delivery);
            }
            notified.await;
        }
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<(), BusError> {
        let mut state = self.bus.lock();
        let Some(group) = state.groups.get_mut(&self.group) else {
            return Err(BusError::Closed);
        };
        let id = (delivery.topic.clone(), delivery.partition);
        // As in Kafka, a member that lost the partition in a rebalance cannot
        // commit for it: the new owner will see the record again.
        let owns = group
            .assignment
            .get(&self.member)
            .is_some_and(|parts| parts.contains(&id));
        if owns {
            let committed = group.committed.entry(id).or_insert(0);
            *committed = (*committed).max(delivery.offset + 1);
        }
        Ok(())
    }

    fn lag(&self) -> Vec<PartitionLag> {
        let state = self.bus.lock();
        let Some(group) = state.groups.get(&self.group) else {
            return Vec::new();
        };
        let mut lags: Vec<PartitionLag> = group
            .assignment
            .get(&self.member)
            .into_iter()
            .flatten()
            .map(|id| {
                let end = state
                    .topics
                    .get(&id.0)
                    .and_then(|p| p.get(id.1 as usize))
                    .map_or(0, |log| log.len() as i64);
                let committed = group.committed.get(id).copied().unwrap_or(0);
                PartitionLag {
                    topic: id.0.clone(),
                    partition: id.1,
                    records: (end - committed).max(0),
                }
            })
            .collect();
        lags.sort();
        lags
    }

    fn pause(&mut self) -> Result<(), BusError> {
        self.paused = true;
        Ok(())
    }

    fn resume(&mut self) -> Result<(), BusError> {
        self.paused = false;
        // Wake our own next() if it is waiting.
        self.bus.changed.notify_waiters();
        Ok(())
    }

    async fn close(self: Box<Self>) -> Result<(), BusError> {
        // Leaving happens in Drop.
        Ok(())
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        let mut state = self.bus.lock();
        if let Some(group) = state.groups.get_mut(&self.group) {
            group.members.retain(|(id, _)| *id != self.member);
        }
        state.rebalance(&self.group);
        drop(state);
        self.bus.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_partition() {
        for key in [&b"a"[..], b"request-17", b"sha256:abcdef"] {
            assert_eq!(partition_for(key, 4), partition_for(key, 4));
        }
        let spread: std::collections::HashSet<usize> = (0..100)
            .map(|i| partition_for(format!("key-{i}").as_bytes(), 4))
            .collect();
        assert_eq!(spread.len(), 4, "keys should use every partition");
    }
}

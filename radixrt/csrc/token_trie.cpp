// Which tokens a byte DFA allows from one state: a walk of the vocabulary's byte trie.
//
// The trie is radixrt/fsm/token_index.py's: stored level by level (the nodes of depth d are
// level_start[d]:level_start[d + 1], sorted by parent), each node with its parent, its byte,
// its children's range and the tokens that end there. A level is stepped whole ("dense":
// every node reads its parent's state, a dead parent giving the dead state 0) while many of
// its nodes live: no step depends on the one before, so the table reads overlap. Once few
// live, only the children of live nodes are visited ("sparse"), so a state that allows few
// tokens touches few nodes.
//
// A plain C ABI (called with ctypes): no torch, no threads, no allocation. The caller owns
// every buffer, so calls on different threads with their own buffers are independent.
// Tables are [num_states * 256] with state 0 dead, its row all 0; DFA states and token ids
// fit in 31 bits.

#include <algorithm>
#include <cstdint>
#include <cstring>

extern "C" {

// Mirrors radixrt/fsm/trie_native.py's _Trie.
struct RadixrtTrie {
  const int32_t* parent;
  const uint8_t* node_byte;
  const int32_t* level_start;  // num_levels + 1 entries; level 0 is the root alone
  int64_t num_levels;
  const int32_t* child_start;
  const int32_t* child_end;
  const int32_t* node_tok;  // the token ending at each node, or `vocab` (none)
  // Tokens spelled like another (rare): `dup_extra[i]` ends where `dup_primary[i]` does.
  const int32_t* dup_primary;
  const int32_t* dup_extra;
  int64_t num_dups;
};

// Mirrors _Scratch: node_state holds the trie's num_nodes int32, front 4 * its largest level,
// by_id vocab + 1 int32 (the last a slot for writes of "no token"); their contents are ignored.
struct RadixrtScratch {
  int32_t* node_state;
  int32_t* front;
  int64_t max_level;
  int32_t* by_id;
  int64_t vocab;
};

}  // extern "C"

namespace {

// Where a walk's (token, state) pairs go: appended to two arrays, or written to an id-indexed
// table (idempotent, so overlapping walks may write the same token). Both take every visited
// node, `keep` telling whether it counts (a token that lives), without a branch: whether a
// node lives and ends a token follows no pattern, and mispredicted branches cost more than
// the walk. The arrays have a spare slot past the last entry; the table's slot `vocab` takes
// the nodes without a token.
struct AppendSink {
  int64_t* ids;
  int64_t* states;
  int64_t count;
  int32_t none;
  void put(int32_t id, int32_t state) {
    ids[count] = id;
    states[count] = state;
    count += (state != 0) & (id != none);
  }
};

struct TableSink {
  int32_t* by_id;
  void put(int32_t id, int32_t state) { by_id[id] = state; }
};

// Walk `t` from DFA state `state`. With `num_roots` >= 0, only the subtrees of the level-1
// nodes `roots` are walked (sparse from the start); else the whole trie.
template <class Sink>
void walk(const RadixrtTrie& t, const int64_t* table, int64_t state, const int32_t* roots,
          int64_t num_roots, RadixrtScratch& scratch, Sink& sink) {
  int32_t* node_state = scratch.node_state;
  int32_t* f_ids = scratch.front;  // the live nodes of the last sparse level, and their states
  int32_t* f_states = scratch.front + scratch.max_level;
  int32_t* g_ids = scratch.front + 2 * scratch.max_level;
  int32_t* g_states = scratch.front + 3 * scratch.max_level;
  int64_t num_front = 0;
  bool dense = num_roots < 0;
  if (!dense) {
    for (int64_t k = 0; k < num_roots; ++k) {
      const int32_t s = static_cast<int32_t>(table[state * 256 + t.node_byte[roots[k]]]);
      if (s != 0) {
        f_ids[num_front] = roots[k];
        f_states[num_front] = s;
        ++num_front;
        sink.put(t.node_tok[roots[k]], s);
      }
    }
    if (num_front == 0) {
      return;
    }
  }
  node_state[0] = static_cast<int32_t>(state);
  for (int64_t d = dense ? 1 : 2; d < t.num_levels; ++d) {
    const int64_t a = t.level_start[d], b = t.level_start[d + 1];
    if (dense) {
      int64_t live = 0;
      for (int64_t j = a; j < b; ++j) {
        const int32_t s =
            static_cast<int32_t>(table[int64_t(node_state[t.parent[j]]) * 256 + t.node_byte[j]]);
        node_state[j] = s;
        live += s != 0;
        sink.put(t.node_tok[j], s);
      }
      if (live == 0) {
        return;
      }
      if (live * 8 < b - a) {  // few live: go on from them alone
        num_front = 0;
        for (int64_t j = a; j < b; ++j) {
          if (node_state[j] != 0) {
            f_ids[num_front] = static_cast<int32_t>(j);
            f_states[num_front] = node_state[j];
            ++num_front;
          }
        }
        dense = false;
      }
    } else {
      int64_t num_next = 0;
      for (int64_t k = 0; k < num_front; ++k) {
        const int64_t row = int64_t(f_states[k]) * 256;
        for (int32_t c = t.child_start[f_ids[k]]; c < t.child_end[f_ids[k]]; ++c) {
          const int32_t s = static_cast<int32_t>(table[row + t.node_byte[c]]);
          g_ids[num_next] = c;
          g_states[num_next] = s;
          num_next += s != 0;
          sink.put(t.node_tok[c], s);
        }
      }
      if (num_next == 0) {
        return;
      }
      std::swap(f_ids, g_ids);
      std::swap(f_states, g_states);
      num_front = num_next;
    }
  }
}

// The nonzero entries of the id-indexed table, ascending.
int64_t compact(const int32_t* by_id, int64_t vocab, int64_t* out_ids, int64_t* out_states) {
  int64_t c = 0;
  for (int64_t id = 0; id < vocab; ++id) {
    if (by_id[id] != 0) {
      out_ids[c] = id;
      out_states[c] = by_id[id];
      ++c;
    }
  }
  return c;
}

}  // namespace

extern "C" {

// The tokens of `t` allowed from `state` (> 0): ids ascending in `out_ids`, the DFA state after
// each in `out_states` (each `scratch.vocab` + 1 long); returns how many.
int64_t radixrt_trie_walk(const RadixrtTrie* t, const int64_t* table, int64_t state,
                          RadixrtScratch* scratch, int64_t* out_ids, int64_t* out_states) {
  const int64_t vocab = scratch->vocab;
  AppendSink sink{out_ids, out_states, 0, static_cast<int32_t>(vocab)};
  walk(*t, table, state, nullptr, -1, *scratch, sink);
  int64_t count = sink.count;
  // Ascending ids: few tokens are sorted in place; many go through the id-indexed table, which
  // costs one pass over the vocabulary instead of a sort.
  if (count * 16 < vocab && (count + t->num_dups) * 2 <= vocab) {
    int64_t* order = reinterpret_cast<int64_t*>(scratch->by_id);  // count + dups int64 fit
    for (int64_t i = 0; i < count; ++i) {
      order[i] = (out_ids[i] << 32) | out_states[i];
    }
    std::sort(order, order + count);
    const int64_t found = count;
    for (int64_t i = 0; i < t->num_dups; ++i) {
      const int64_t key = int64_t(t->dup_primary[i]) << 32;
      const int64_t* at = std::lower_bound(order, order + found, key);
      if (at != order + found && (*at >> 32) == t->dup_primary[i]) {
        order[count++] = (int64_t(t->dup_extra[i]) << 32) | (*at & 0xffffffffLL);
      }
    }
    std::sort(order + found, order + count);
    std::inplace_merge(order, order + found, order + count);
    for (int64_t i = 0; i < count; ++i) {
      out_ids[i] = order[i] >> 32;
      out_states[i] = order[i] & 0xffffffffLL;
    }
    return count;
  }
  int32_t* by_id = scratch->by_id;
  std::memset(by_id, 0, sizeof(int32_t) * vocab);
  for (int64_t i = 0; i < count; ++i) {
    by_id[out_ids[i]] = static_cast<int32_t>(out_states[i]);
  }
  for (int64_t i = 0; i < t->num_dups; ++i) {
    by_id[t->dup_extra[i]] = by_id[t->dup_primary[i]];
  }
  return compact(by_id, vocab, out_ids, out_states);
}

// The same answer for a state inside a string, where the DFA treats the plain tokens' bytes
// alike but for a few first bytes (see TokenTrie.allowed_tokens): a plain token of n bytes
// whose first byte is not an exception ends in `chain[n]` (0: not allowed); the plain tokens
// starting with an exception are found by walking the whole trie `full` under the level-1
// nodes `roots` (those bytes); every other token is in `rest`, walked from `state`.
int64_t radixrt_string_walk(const RadixrtTrie* full, const RadixrtTrie* rest,
                            const int64_t* table, int64_t state, const int64_t* chain,
                            const int32_t* plain_ids, const int32_t* plain_len,
                            const uint8_t* plain_first, int64_t num_plain,
                            const uint8_t* exception, const int32_t* roots, int64_t num_roots,
                            RadixrtScratch* scratch, int64_t* out_ids, int64_t* out_states) {
  int32_t* by_id = scratch->by_id;
  std::memset(by_id, 0, sizeof(int32_t) * scratch->vocab);
  for (int64_t i = 0; i < num_plain; ++i) {
    if (!exception[plain_first[i]]) {
      by_id[plain_ids[i]] = static_cast<int32_t>(chain[plain_len[i]]);
    }
  }
  TableSink sink{by_id};
  walk(*rest, table, state, nullptr, -1, *scratch, sink);
  if (num_roots > 0) {
    walk(*full, table, state, roots, num_roots, *scratch, sink);
  }
  for (int64_t i = 0; i < full->num_dups; ++i) {  // (every token's entry is final now)
    by_id[full->dup_extra[i]] = by_id[full->dup_primary[i]];
  }
  return compact(by_id, scratch->vocab, out_ids, out_states);
}

}  // extern "C"

import numpy as np

from textgen.batching import StreamBatches


def test_row_i_of_batch_k_plus_1_continues_row_i_of_batch_k():
    ids = np.arange(1000)
    batches = StreamBatches(ids, batch_size=4, seq_length=10)
    assert len(batches) == (1000 - 1) // 40
    for k in range(len(batches) - 1):
        x, y = batches[k]
        x_next, _ = batches[k + 1]
        assert x.shape == y.shape == (4, 10)
        np.testing.assert_array_equal(x_next[:, 0], x[:, -1] + 1)  # contiguous streams
        np.testing.assert_array_equal(y, x + 1)  # targets are inputs shifted by one


def test_streams_cover_contiguous_text_in_order_without_shuffling():
    ids = np.arange(2000)
    batches = StreamBatches(ids, batch_size=5, seq_length=7)
    rows = np.concatenate([batches[k][0] for k in range(len(batches))], axis=1)
    length = rows.shape[1]
    for i in range(5):
        np.testing.assert_array_equal(rows[i], np.arange(i * length, (i + 1) * length))


def test_remainder_dropped_and_partial_window_kept_only_on_request():
    ids = np.arange(95)  # 94 targets: 2 streams x 47 columns
    assert len(StreamBatches(ids, 2, 10)) == 4  # 40 columns used, 7 dropped
    partial = StreamBatches(ids, 2, 10, keep_partial=True)
    assert len(partial) == 5
    x, y = partial[4]
    assert x.shape == (2, 7)
    np.testing.assert_array_equal(y, x + 1)


def test_too_short_gives_no_batches():
    assert len(StreamBatches(np.arange(40), batch_size=4, seq_length=10)) == 0
    assert StreamBatches.min_length(4, 10) == 41


def test_the_ids_only_in_validation_are_found_in_passes_of_any_size(monkeypatch):
    from textgen import batching

    train_ids, val_ids = np.array([0, 1, 1, 4, 0, 2, 1], np.uint8), np.array([2, 3, 5, 3, 0], np.uint8)
    for per_pass in (1, 3, 1 << 24):
        monkeypatch.setattr(batching, "COUNTED_PER_PASS", per_pass)
        assert batching.only_in_validation(train_ids, val_ids, 7).tolist() == [3, 5]  # 6 comes in neither

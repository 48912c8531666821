"""facesearch.model.inference.ThreadTuner: enroll's per-pass choice of threads, and (ONNX Runtime) of the
images per pass, by the measured time per image of real passes."""

import time

from facesearch.model.inference import ThreadTuner


def _run(tuner: ThreadTuner, seconds_per_image, passes: int) -> list[tuple[int, int | None]]:
    """Drive the tuner through ``passes`` passes whose time per image is ``seconds_per_image(threads,
    batch)`` (faked by moving its start time back); returns what each pass ran with."""
    ran = []
    for _ in range(passes):
        tuner.start()
        t, b = tuner.current, tuner.current_batch
        n = b or 8
        tuner.t0 = time.perf_counter() - seconds_per_image(t, b) * n
        tuner.stop(n)
        ran.append((t, b))
    return ran


def test_threads_alone_as_before():
    tuner = ThreadTuner(2, trials=2, every=400)
    ran = _run(tuner, lambda t, b: 0.01 if t == 2 else 0.03, 12)
    assert ran[0] == (1, None)  # the warm-up: one thread
    assert sorted(ran[1:5]) == [(1, None), (1, None), (2, None), (2, None)]  # each tried twice
    assert set(ran[5:]) == {(2, None)}  # then the faster kept


def test_it_chooses_the_images_per_pass_where_offered():
    tuner = ThreadTuner(2, trials=2, every=400)
    tuner.offer_batches((8, 2))
    # one thread at 2 images a pass is the fastest (as ONNX Runtime runs SFace on a busy machine)
    cost = {(1, 8): 0.030, (2, 8): 0.020, (1, 2): 0.012, (2, 2): 0.016}
    ran = _run(tuner, lambda t, b: cost[(t, b or 8)], 20)
    assert sorted(ran[1:9]) == sorted(list(cost) * 2)  # every choice tried twice, after the warm-up
    assert set(ran[9:]) == {(1, 2)}
    # and measured again later: the machine changed, two threads at 8 became the fastest
    cost.update({(2, 8): 0.005})
    ran = _run(tuner, lambda t, b: cost[(t, b or 8)], 400)
    assert ran[-1] == (2, 8)


def test_an_offer_after_the_first_pass_or_of_one_size_changes_nothing():
    tuner = ThreadTuner(2)
    tuner.offer_batches((8, 8))
    assert tuner.choices == [(1, None), (2, None)]
    _run(tuner, lambda t, b: 0.01, 1)
    tuner.offer_batches((8, 2))
    assert tuner.choices == [(1, None), (2, None)]

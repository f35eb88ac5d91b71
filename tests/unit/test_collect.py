import gc

from dataflows.collect import YOUNG_GC_THRESHOLD, collect_less


def test_collect_less_freezes_what_exists_and_restores_collection_after() -> None:
    before = gc.get_threshold()
    with collect_less():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, *before[1:])
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_collect_less_restores_collection_when_the_flow_raises() -> None:
    before = gc.get_threshold()
    try:
        with collect_less():
            raise RuntimeError("flow failed")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before

"""The parts of benchmarks/hospital.py that decide its figures, on tiny inputs (the benchmark itself runs minutes)."""
from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa

from benchmarks.hospital import PAPER, ProcessWatcher, cohort_agreement, hospital_params, patients_in
from synthetic.hospital import HospitalParams


def test_the_paper_row_is_the_demo_hospital_and_other_sizes_keep_its_mix():
    assert hospital_params(PAPER) == HospitalParams()
    for n in (10_000, 40_000, 200_000):
        params = hospital_params(str(n))
        assert abs(patients_in(params) - n) <= 1
        assert params.seed == HospitalParams().seed and params.messy
        assert round(params.n_retrospective / n, 2) == round(HospitalParams().n_retrospective / patients_in(HospitalParams()), 2)


def test_the_watcher_sees_a_grandchild_and_its_peak_memory():
    # a child that starts a grandchild holding 80 MB for a second: the watcher must find it through the tree
    grandchild = "b = bytearray(80 * 2**20); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep(1.0)"
    child = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}])"])
    watcher = ProcessWatcher(child.pid, interval_s=0.05)
    watcher.start()
    child.wait()
    watcher.stop()
    assert len(watcher.processes) >= 2 and child.pid in watcher.processes
    assert max(p.peak_rss_mb for p in watcher.processes.values()) >= 80


def test_agreement_counts_missing_extra_and_regrouped_patients(tmp_path):
    truth = tmp_path / "truth.ndjson"
    truth.write_text('{"fhir_patient_id": "a", "retro_reason": null, "group": "tacrolimus"}\n'
                     '{"fhir_patient_id": "b", "retro_reason": null, "group": "conventional"}\n'
                     '{"fhir_patient_id": "c", "retro_reason": null, "group": "tacrolimus"}\n'
                     '{"fhir_patient_id": "d", "retro_reason": "age_under_18"}\n')
    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE TABLE cohort (patient_key TEXT, "group" TEXT)'))
        conn.execute(sa.text("CREATE TABLE patient_xref (patient_key TEXT, fhir_patient_id TEXT)"))
        conn.execute(sa.text("INSERT INTO cohort VALUES ('ka', 'tacrolimus'), ('kb', 'tacrolimus'), ('kd', 'conventional')"))
        conn.execute(sa.text("INSERT INTO patient_xref VALUES ('ka', 'a'), ('kb', 'b'), ('kc', 'c'), ('kd', 'd')"))
    engine.dispose()
    assert cohort_agreement(url, truth) == {"truth": 3, "cohort": 3, "missing": 1, "extra": 1, "wrong_group": 1}

import resource, time, sys, shutil, warnings
warnings.simplefilter("ignore")
from pathlib import Path
import dagster as dg
from synthetic.consortium import Consortium, SITES, SITE_SELECTION
import synthetic.consortium as sc
def cpu(): r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
root = Path("/tmp/fedtime"); shutil.rmtree(root, ignore_errors=True)
c = Consortium(root); c.make_keys()
s = SITES[1]
c.export_hospital(s)
for label, sel in (("with checks", SITE_SELECTION), ("without checks", SITE_SELECTION.without_checks())):
    shutil.rmtree(root / s.site_id / "dagster_home", ignore_errors=True); (root / s.site_id / "warehouse.sqlite").unlink(missing_ok=True)
    sc.SITE_SELECTION = sel
    t, u = time.time(), cpu()
    with dg.DagsterInstance.ephemeral() as inst:
        r = dg.materialize([*sc.all_assets, sc.site_aggregates], selection=sel, instance=inst, resources=c.site_resources(s))
    print(label, r.success, "wall", round(time.time()-t,1), "cpu", round(cpu()-u,1), flush=True)

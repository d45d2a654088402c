import json, sys, statistics as st
res = {}
for f in sys.argv[1:]: res.update({k: v for k, v in json.load(open(f)).items() if not k.startswith("_")})
tasks = sorted({k.split("/")[0] for k in res}); names = list(next(iter(res.values())))
print("task", *names, sep=" | ")
med = {n: [] for n in names}
for t in tasks:
    row = [t]
    for n in names:
        v = [res[k][n]["speedup"] for k in res if k.startswith(t + "/")]
        m = st.median(v); med[n].append(m); row.append(f"{m:.2f} ({sum(x>=1 for x in v)}/{len(v)})")
    print(*row, sep=" | ")
print("median", *[f"{st.median(med[n]):.2f} [{sum(x>=1 for x in med[n])}/{len(med[n])}]" for n in names], sep=" | ")

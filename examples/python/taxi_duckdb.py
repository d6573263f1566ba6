"""DuckDB SQL over the taxi example's inputs in s4, through fsspec.

    python examples/python/taxi_duckdb.py

Needs the outputs of `bash examples/taxi/run.sh` on a running cluster and the
fsspec extra. `register_filesystem` hands duckdb the s4 filesystem; duckdb
then globs and reads `s4://` paths itself (ranged reads of each key). Exits
non-zero if SQL's count per passenger count differs from the pipeline's.
"""
import sys

import duckdb
import fsspec

con = duckdb.connect()
con.register_filesystem(fsspec.filesystem("s4"))

counts = con.sql("""
    select Passenger_Count as passengers, count(*) as trips
    from read_csv('s4://taxi/inputs/*.csv') group by 1 order by 1""").fetchall()
results = con.sql("""
    select * from read_csv('s4://taxi/step4/results', header = false,
                           columns = {'passengers': 'BIGINT', 'trips': 'BIGINT'})
    order by 1""").fetchall()
print(con.sql("""
    select Payment_Type, count(*) as trips, round(avg(Fare_Amt), 2) as avg_fare,
           round(avg(Tip_Amt), 2) as avg_tip
    from read_csv('s4://taxi/inputs/*.csv') group by 1 order by 2 desc"""))
if counts != results:
    sys.exit(f"FAIL: duckdb counted {counts}, the pipeline {results}")
print("duckdb: the counts match s4://taxi/step4/results")

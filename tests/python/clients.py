"""Unmodified pyarrow Flight and ADBC Flight SQL clients against a running
Honeycell. Used by tests/tests/python_clients.rs and as the README example.

usage: clients.py FLIGHT_PORT TOKEN
Prints one JSON object with what each client saw.
"""
import json
import sys

import pyarrow as pa
import pyarrow.flight as flight


def main() -> None:
    port, token = int(sys.argv[1]), sys.argv[2]
    auth = [(b"authorization", f"Bearer {token}".encode())]
    options = flight.FlightCallOptions(headers=auth)
    client = flight.FlightClient(f"grpc+tcp://127.0.0.1:{port}")

    # DoPut: a pyarrow table with a subset of the event schema.
    table = pa.table(
        {
            "event_type": ["INSERT", "UPDATE", "CUSTOM"],
            "entity_type": ["order", "order", "invoice"],
            "entity_id": ["py-1", "py-1", "py-2"],
            "data": ['{"total": 1}', '{"total": 2}', None],
        }
    )
    descriptor = flight.FlightDescriptor.for_path("events")
    writer, reader = client.do_put(descriptor, table.schema, options=options)
    writer.write_table(table)
    writer.done_writing()
    ack = json.loads(reader.read().to_pybytes())
    writer.close()

    # GetFlightInfo + DoGet at the endpoint's location (the owning cell).
    query = flight.FlightDescriptor.for_command(json.dumps({"entity_type": "order"}))
    info = client.get_flight_info(query, options=options)
    endpoint = info.endpoints[0]
    location = endpoint.locations[0].uri.decode()
    owner = flight.FlightClient(location)
    orders = owner.do_get(endpoint.ticket, options=options).read_all()

    # Flight SQL through ADBC.
    import adbc_driver_flightsql.dbapi as flightsql
    from adbc_driver_flightsql import DatabaseOptions

    conn = flightsql.connect(
        f"grpc://127.0.0.1:{port}",
        db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"},
    )
    cur = conn.cursor()
    cur.execute("SELECT entity_type, count(*) AS n FROM events GROUP BY entity_type ORDER BY entity_type")
    counts = cur.fetch_arrow_table().to_pylist()
    cur.close()
    conn.close()

    print(
        json.dumps(
            {
                "put_ack": ack,
                "location": location,
                "doget_rows": orders.num_rows,
                "doget_entity_ids": orders.column("entity_id").to_pylist(),
                "doget_columns": orders.schema.names,
                "sql_counts": counts,
            }
        )
    )


if __name__ == "__main__":
    main()

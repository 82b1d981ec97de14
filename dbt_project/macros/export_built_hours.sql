{% macro export_built_hours(ds, until, path) %}
    {#- Publishing reads the warehouse through dbt, its only user: the day's built hours to one Parquet file. -#}
    {% set export %}
        copy (
            select *
            from {{ ref('fct_hourly_metrics') }}
            where event_date = cast('{{ checked_day(ds, "ds") }}' as date)
              and event_hour < cast('{{ checked_instant(until, "until") }}' as timestamp)
            order by event_hour, country
        ) to '{{ path | replace("'", "''") }}' (format parquet, compression zstd)
    {% endset %}
    {% do run_query(export) %}
{% endmacro %}

{% macro export_built_days(days) %}
    {#- A range build's days, each to a file of its own as export_built_hours writes it, in one dbt run. -#}
    {% for day in days %}
        {% do export_built_hours(day.ds, day.until, day.path) %}
    {% endfor %}
{% endmacro %}

//! Rendering an inventory: JSON (the `cmdb.inventory/v1` contract) or a table for people.

use std::io::{self, Write};

use cmdb_proto::model::{AttrValue, Inventory};

/// Writes the inventory as one JSON document followed by a newline.
pub fn write_json(inv: &Inventory, out: &mut impl Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, inv).map_err(io::Error::other)?;
    out.write_all(b"\n")
}

/// Longest attribute text shown in a table cell.
const CELL: usize = 60;

/// Writes the collectors, the host block and every item as aligned text.
pub fn write_table(inv: &Inventory, out: &mut impl Write) -> io::Result<()> {
    let h = &inv.host;
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    writeln!(out, "HOST")?;
    writeln!(out, "  hostname      {}", opt(&h.hostname))?;
    writeln!(out, "  fqdn          {}", opt(&h.fqdn))?;
    writeln!(out, "  machine_id    {}", opt(&h.machine_id))?;
    writeln!(out, "  product_uuid  {}", opt(&h.product_uuid))?;
    writeln!(out, "  serial_number {}", opt(&h.serial_number))?;
    writeln!(out, "  board_serial  {}", opt(&h.board_serial))?;
    writeln!(out, "  macs          {}", h.macs.join(", "))?;
    writeln!(out, "  instance_id   {}", inv.agent.instance_id)?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<16} {:<18} {:>8} {:>7}  MESSAGE",
        "COLLECTOR", "STATUS", "MS", "ITEMS"
    )?;
    for c in &inv.collectors {
        writeln!(
            out,
            "{:<16} {:<18} {:>8} {:>7}  {}",
            c.name,
            c.status.as_str(),
            c.duration_ms,
            c.items,
            c.message.as_deref().unwrap_or("")
        )?;
    }
    let mut current = "";
    for item in &inv.items {
        if item.class != current {
            current = &item.class;
            let n = inv.items.iter().filter(|i| i.class == current).count();
            writeln!(out, "\n{} ({n})", current.to_ascii_uppercase())?;
        }
        let attrs: Vec<String> = item
            .attrs
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect();
        writeln!(out, "  {:<32} {}", item.key, attrs.join(" "))?;
    }
    if !inv.relations.is_empty() {
        writeln!(out, "\nRELATIONS ({})", inv.relations.len())?;
        for r in &inv.relations {
            writeln!(out, "  {} -{}-> {}", r.from, r.kind, r.to)?;
        }
    }
    Ok(())
}

fn cell(v: &AttrValue) -> String {
    let s = v.to_string();
    if s.chars().count() > CELL {
        let cut: String = s.chars().take(CELL - 1).collect();
        format!("{cut}…")
    } else {
        s
    }
}

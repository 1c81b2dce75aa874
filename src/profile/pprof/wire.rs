//! The protobuf wire format, as much of it as `profile.proto` needs: varints,
//! length-delimited fields, packed repeated varints.

pub(super) fn value_type(ty: i64, unit: i64) -> Vec<u8> {
    let mut msg = Vec::new();
    int_field(&mut msg, 1, ty as u64);
    int_field(&mut msg, 2, unit as u64);
    msg
}

pub(super) fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A varint field (wire type 0); zero is the default and is left out.
pub(super) fn int_field(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        varint(out, u64::from(field) << 3);
        varint(out, value);
    }
}

/// A length-delimited field (wire type 2): a string, bytes or an embedded message.
pub(super) fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, u64::from(field) << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A packed repeated varint field.
pub(super) fn packed(out: &mut Vec<u8>, field: u32, values: &[u64]) {
    if values.is_empty() {
        return;
    }
    let mut body = Vec::new();
    for &value in values {
        varint(&mut body, value);
    }
    bytes_field(out, field, &body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_as_protobuf_writes_them() {
        let mut out = Vec::new();
        for value in [0, 1, 127, 128, 300, u64::MAX] {
            varint(&mut out, value);
        }
        assert_eq!(
            out,
            [
                0, 1, 127, 0x80, 1, 0xac, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                1
            ]
        );
    }
}

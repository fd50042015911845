package translate

import (
	"strings"
	"testing"
	"time"
)

func TestMeshConfigCertValidity(t *testing.T) {
	for _, tt := range []struct {
		value   string
		want    time.Duration
		wantErr string
	}{
		{"1h", time.Hour, ""},
		{"0s", 0, "is not positive"},
		{"-5m", 0, "is not positive"},
		{"1 day", 0, "is not a duration"},
	} {
		t.Run(tt.value, func(t *testing.T) {
			doc := "apiVersion: config.openservicemesh.io/v1alpha2\nkind: MeshConfig\nmetadata: {name: osm-mesh-config, namespace: osm-system}\nspec:\n  certificate:\n    serviceCertValidityDuration: " + tt.value + "\n"
			rs, err := Decode([]byte(doc), "mesh.yaml")
			if err != nil {
				t.Fatal(err)
			}
			objs, errs, _ := Translate(rs)
			if tt.wantErr != "" {
				if len(errs) != 1 || errs[0].Field != fieldCertTTL || !strings.Contains(errs[0].Message, tt.wantErr) {
					t.Fatalf("errors = %v, want one on %s containing %q", errs, fieldCertTTL, tt.wantErr)
				}
				return
			}
			if len(errs) > 0 || objs.Mesh == nil || objs.Mesh.CertValidity != tt.want {
				t.Fatalf("errs %v, mesh %+v; want certificate validity %s", errs, objs.Mesh, tt.want)
			}
		})
	}
}
